// Command addons plays, against the local control plane, the parts of an OKE cluster that
// the Kubernetes components alone do not have:
//
//   - LoadBalancer addresses: MetalLB's real controller (go.universe.tf/metallb), given a
//     pool from 203.0.113.0/24 (TEST-NET-3), assigns each LoadBalancer Service an address
//     the way OKE's cloud controller gives it an OCI load balancer's. Nothing announces the
//     address (MetalLB's speaker is not run): it is status only, as with kwok's pods.
//   - External Secrets Operator: its real controller, so that an ExternalSecret becomes a
//     Secret (the examples' local overlays use its `fake` provider in place of OCI Vault).
//   - Node labels: each kwok node gets the fault-domain label OKE puts on its nodes
//     (oci.oraclecloud.com/fault-domain, FAULT-DOMAIN-1, -2, ...), so that topology spread
//     over fault domains schedules as it does on OKE. An emulation: there are no real nodes.
//   - Ingress status: an emulation of ingress-nginx's status updater (its
//     --publish-service): each Ingress of an ingress-nginx class gets the address of the
//     LoadBalancer Service of that controller. The controller's own pods are kwok's fakes
//     and cannot do it.
//
// It installs the add-ons' CRDs (from their modules), starts the two controllers as child
// processes with their logs in --logs, writes --ready once a probe Service got an address,
// and runs until stdin closes (--exit-with-stdin), a signal, or a child exits.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"
)

const (
	metallbNamespace = "metallb-system"
	pool             = "203.0.113.0/24"
	manager          = "gitops-agent-addons"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "addons:", err)
		os.Exit(1)
	}
}

func run() error {
	kubeconfig := flag.String("kubeconfig", "", "the local control plane's admin kubeconfig")
	logs := flag.String("logs", "", "directory for the controllers' logs")
	ready := flag.String("ready", "", "file written once the add-ons work")
	exitWithStdin := flag.Bool("exit-with-stdin", false, "stop when standard input closes")
	flag.Parse()
	if *kubeconfig == "" || *logs == "" {
		return errors.New("--kubeconfig and --logs are required")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin := filepath.Dir(self)
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	client := kubernetes.NewForConfigOrDie(cfg)
	dyn := dynamic.NewForConfigOrDie(cfg)

	stop := make(chan string, 4)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { s := <-sig; stop <- "signal " + s.String() }()
	if *exitWithStdin {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); stop <- "stdin closed" }()
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := installCRDs(ctx, dyn, filepath.Join(bin, "crds")); err != nil {
		return err
	}
	if err := metallbPool(ctx, client, dyn); err != nil {
		return err
	}
	if err := faultDomains(ctx, client); err != nil {
		return err
	}
	children := []*exec.Cmd{
		command(*logs, "metallb-controller", filepath.Join(bin, "metallb-controller"), nil,
			"--kubeconfig", *kubeconfig, "--namespace", metallbNamespace,
			"--webhook-mode", "disabled", "--disable-cert-rotation", "--port", "0", "--log-level", "info"),
		command(*logs, "external-secrets", filepath.Join(bin, "external-secrets"),
			[]string{"KUBECONFIG=" + *kubeconfig},
			"--metrics-addr", "127.0.0.1:0", "--enable-leader-election=false", "--concurrent", "2"),
	}
	exited := make(chan string, len(children))
	for _, c := range children {
		if err := c.Start(); err != nil {
			return err
		}
		go func(c *exec.Cmd) { err := c.Wait(); exited <- fmt.Sprintf("%s exited: %v", filepath.Base(c.Path), err) }(c)
	}
	defer func() {
		for _, c := range children {
			_ = syscall.Kill(-c.Process.Pid, syscall.SIGTERM)
		}
	}()
	go ingressStatus(context.Background(), client)
	if err := probe(ctx, client, exited); err != nil {
		return err
	}
	if *ready != "" {
		if err := os.WriteFile(*ready, []byte("ok\n"), 0o644); err != nil {
			return err
		}
	}
	fmt.Println("add-ons ready: MetalLB controller (pool " + pool + "), External Secrets Operator, node fault domains, ingress status")
	select {
	case r := <-stop:
		fmt.Println("stopping add-ons:", r)
		return nil
	case r := <-exited:
		return errors.New(r)
	}
}

// command is a child in its own process group, killed by the kernel if we die first.
func command(logs, name, bin string, env []string, args ...string) *exec.Cmd {
	c := exec.Command(bin, args...)
	c.Env = append(os.Environ(), env...)
	if f, err := os.OpenFile(filepath.Join(logs, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		c.Stdout, c.Stderr = f, f
	}
	c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	return c
}

var crdResource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// installCRDs server-side applies every CRD file in dir and waits until each is Established.
func installCRDs(ctx context.Context, dyn dynamic.Interface, dir string) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no CRDs in %s (%v)", dir, err)
	}
	api := dyn.Resource(crdResource)
	var names []string
	for _, f := range files {
		obj, err := readObject(f)
		if err != nil {
			return err
		}
		if _, err := api.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: manager, Force: true}); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
		names = append(names, obj.GetName())
	}
	for _, n := range names {
		if err := poll(ctx, "CRD "+n+" Established", func() (bool, error) {
			crd, err := api.Get(ctx, n, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, c := range conds {
				m, _ := c.(map[string]interface{})
				if m["type"] == "Established" && m["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

func readObject(path string) (*unstructured.Unstructured, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m map[string]interface{}
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &unstructured.Unstructured{Object: m}, nil
}

// metallbPool is MetalLB's namespace and the address pool it assigns from.
func metallbPool(ctx context.Context, client kubernetes.Interface, dyn dynamic.Interface) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: metallbNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !isExists(err) {
		return err
	}
	gvr := schema.GroupVersionResource{Group: "metallb.io", Version: "v1beta1", Resource: "ipaddresspools"}
	obj := &unstructured.Unstructured{Object: map[string]interface{}{
		"apiVersion": "metallb.io/v1beta1",
		"kind":       "IPAddressPool",
		"metadata":   map[string]interface{}{"name": "oke-load-balancers", "namespace": metallbNamespace},
		"spec":       map[string]interface{}{"addresses": []interface{}{pool}},
	}}
	_, err := dyn.Resource(gvr).Namespace(metallbNamespace).Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: manager, Force: true})
	return err
}

// faultDomains labels the kwok nodes, in name order, FAULT-DOMAIN-1, -2, -3, -1, ...
func faultDomains(ctx context.Context, client kubernetes.Interface) error {
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "type=kwok"})
	if err != nil {
		return err
	}
	sort.Slice(nodes.Items, func(i, j int) bool { return nodes.Items[i].Name < nodes.Items[j].Name })
	for i, n := range nodes.Items {
		patch := fmt.Sprintf(`{"metadata":{"labels":{"oci.oraclecloud.com/fault-domain":"FAULT-DOMAIN-%d"}}}`, i%3+1)
		if _, err := client.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{FieldManager: manager}); err != nil {
			return fmt.Errorf("Node/%s: %w", n.Name, err)
		}
	}
	return nil
}

// probe proves MetalLB assigns: a LoadBalancer Service gets an address, then goes.
func probe(ctx context.Context, client kubernetes.Interface, exited <-chan string) error {
	svcs := client.CoreV1().Services(metallbNamespace)
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		Spec: corev1.ServiceSpec{
			Type:  corev1.ServiceTypeLoadBalancer,
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(80)}},
		},
	}
	if _, err := svcs.Create(ctx, svc, metav1.CreateOptions{}); err != nil && !isExists(err) {
		return err
	}
	err := poll(ctx, "an address for the probe LoadBalancer Service", func() (bool, error) {
		select {
		case r := <-exited:
			return false, errors.New(r)
		default:
		}
		s, err := svcs.Get(ctx, "probe", metav1.GetOptions{})
		return err == nil && len(s.Status.LoadBalancer.Ingress) > 0, nil
	})
	_ = svcs.Delete(context.Background(), "probe", metav1.DeleteOptions{})
	return err
}

// ingressStatus copies the address of each ingress-nginx controller's LoadBalancer Service
// into the status of the Ingresses of its classes, every second, as the controller's
// --publish-service does.
func ingressStatus(ctx context.Context, client kubernetes.Interface) {
	for {
		if err := publish(ctx, client); err != nil {
			fmt.Fprintln(os.Stderr, "ingress status:", err)
		}
		time.Sleep(time.Second)
	}
}

func publish(ctx context.Context, client kubernetes.Interface) error {
	classes, err := client.NetworkingV1().IngressClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	svcs, err := client.CoreV1().Services("").List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=ingress-nginx,app.kubernetes.io/component=controller",
	})
	if err != nil {
		return err
	}
	var addr []corev1.LoadBalancerIngress
	for _, s := range svcs.Items {
		if s.Spec.Type == corev1.ServiceTypeLoadBalancer && len(s.Status.LoadBalancer.Ingress) > 0 {
			addr = s.Status.LoadBalancer.Ingress
		}
	}
	nginx := map[string]bool{}
	for _, c := range classes.Items {
		if c.Spec.Controller == "k8s.io/ingress-nginx" {
			nginx[c.Name] = true
		}
	}
	if addr == nil || len(nginx) == 0 {
		return nil
	}
	ings, err := client.NetworkingV1().Ingresses("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, ing := range ings.Items {
		if ing.Spec.IngressClassName == nil || !nginx[*ing.Spec.IngressClassName] {
			continue
		}
		if len(ing.Status.LoadBalancer.Ingress) == 1 && ing.Status.LoadBalancer.Ingress[0].IP == addr[0].IP {
			continue
		}
		patch := fmt.Sprintf(`{"status":{"loadBalancer":{"ingress":[{"ip":%s}]}}}`, strconv.Quote(addr[0].IP))
		if _, err := client.NetworkingV1().Ingresses(ing.Namespace).Patch(ctx, ing.Name, types.MergePatchType,
			[]byte(patch), metav1.PatchOptions{FieldManager: manager}, "status"); err != nil {
			return fmt.Errorf("Ingress/%s/%s: %w", ing.Namespace, ing.Name, err)
		}
	}
	return nil
}

func poll(ctx context.Context, what string, check func() (bool, error)) error {
	var last error
	for {
		ok, err := check()
		if ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %v (last error: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func isExists(err error) bool { return apierrors.IsAlreadyExists(err) }
