package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/version"
)

// Files the supervisor leaves in --dir for its callers.
const (
	readyFile   = "ready"          // written last, holds the admin kubeconfig path
	failedFile  = "failed"         // written on start-up failure, holds the error
	pidFile     = "supervisor.pid" // the supervisor's pid, for `down`
	kubeconfig  = "kubeconfig"     // admin (system:masters) kubeconfig
	fakeNodes   = 2
	startBudget = 180 * time.Second
)

func kubeVersion() string { return version.Get().GitVersion }

type proc struct {
	name string
	cmd  *exec.Cmd
	done chan error
}

type supervisor struct {
	dir   string
	bin   string // this executable
	kwok  string // kwok binary beside it
	procs []*proc
}

func runSupervise(args []string) error {
	fs := flag.NewFlagSet("supervise", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory (certificates, data, logs, kubeconfig)")
	exitWithStdin := fs.Bool("exit-with-stdin", false, "stop the cluster when standard input closes (the parent died)")
	cleanup := fs.Bool("cleanup", false, "remove --dir after stopping")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("supervise: --dir is required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	s, err := newSupervisor(abs)
	if err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(abs, readyFile))
	_ = os.Remove(filepath.Join(abs, failedFile))
	if err := os.WriteFile(filepath.Join(abs, pidFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return err
	}

	stop := make(chan string, 4)
	sig := make(chan os.Signal, 2)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	go func() { s := <-sig; stop <- "signal " + s.String() }()
	if *exitWithStdin {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); stop <- "stdin closed" }()
	}

	started := time.Now()
	if err := s.start(stop); err != nil {
		s.stopAll()
		_ = os.WriteFile(filepath.Join(abs, failedFile), []byte(err.Error()), 0o644)
		return err
	}
	fmt.Printf("control plane %s up in %.1fs; kubeconfig %s\n", kubeVersion(), time.Since(started).Seconds(), filepath.Join(abs, kubeconfig))
	if err := os.WriteFile(filepath.Join(abs, readyFile), []byte(filepath.Join(abs, kubeconfig)), 0o644); err != nil {
		s.stopAll()
		return err
	}

	// Run until told to stop, or until a component dies (a half cluster is worse than none).
	reason := s.wait(stop)
	fmt.Println("stopping control plane:", reason)
	s.stopAll()
	_ = os.Remove(filepath.Join(abs, readyFile))
	_ = os.Remove(filepath.Join(abs, pidFile))
	if *cleanup {
		return os.RemoveAll(abs)
	}
	return nil
}

func newSupervisor(dir string) (*supervisor, error) {
	bin, err := os.Executable()
	if err != nil {
		return nil, err
	}
	kwok := filepath.Join(filepath.Dir(bin), "kwok")
	if _, err := os.Stat(kwok); err != nil {
		return nil, fmt.Errorf("kwok binary not found beside %s: %w", bin, err)
	}
	for _, d := range []string{"pki", "etcd", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	return &supervisor{dir: dir, bin: bin, kwok: kwok}, nil
}

// auditLog is where the API server logs service accounts' writes, one JSON event a line.
const auditLog = "audit.log"

const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    userGroups: ["system:serviceaccounts:kube-system"]
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: None
`

func (s *supervisor) path(p ...string) string { return filepath.Join(append([]string{s.dir}, p...)...) }

func (s *supervisor) start(stop <-chan string) error {
	ctx, cancel := context.WithTimeout(context.Background(), startBudget)
	defer cancel()
	// A stop request during start-up aborts it; after start-up wait() takes over the channel.
	go func() {
		select {
		case <-stop:
			cancel()
		case <-ctx.Done():
		}
	}()

	ports, err := freePorts(6)
	if err != nil {
		return err
	}
	etcdClient, etcdPeer, apiPort, kcmPort, schedPort, kwokPort := ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]

	pki, err := writePKI(s.path("pki"))
	if err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", apiPort)
	for _, u := range []struct{ file, cert string }{
		{kubeconfig, "admin"},
		{"controller-manager.kubeconfig", "controller-manager"},
		{"scheduler.kubeconfig", "scheduler"},
	} {
		if err := writeKubeconfig(s.path(u.file), server, pki, u.cert); err != nil {
			return err
		}
	}

	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", etcdClient)
	if err := s.spawn("etcd", s.bin, "etcd", "--data-dir", s.path("etcd"), "--listen-client", etcdURL,
		"--listen-peer", fmt.Sprintf("http://127.0.0.1:%d", etcdPeer)); err != nil {
		return err
	}
	if err := s.poll(ctx, "etcd", func() error { return httpOK(nil, etcdURL+"/health") }); err != nil {
		return err
	}

	// Writes by service accounts outside kube-system are audited (tests run replicas under
	// their own service accounts and check, from the API server's side, who wrote what and
	// when); the admin's and the controllers' requests are not, so other tests pay nothing.
	if err := os.WriteFile(s.path("audit-policy.yaml"), []byte(auditPolicy), 0o644); err != nil {
		return err
	}
	if err := s.spawn("kube-apiserver", s.bin, "kube-apiserver",
		"--audit-policy-file", s.path("audit-policy.yaml"),
		"--audit-log-path", s.path(auditLog),
		"--audit-log-format", "json",
		"--audit-log-mode", "blocking",
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1",
		"--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPort),
		"--tls-cert-file", pki.file("apiserver.crt"),
		"--tls-private-key-file", pki.file("apiserver.key"),
		"--client-ca-file", pki.file("ca.crt"),
		"--authorization-mode", "Node,RBAC",
		"--service-cluster-ip-range", "10.0.0.0/24",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", pki.file("sa.pub"),
		"--service-account-signing-key-file", pki.file("sa.key"),
		"--api-audiences", "https://kubernetes.default.svc.cluster.local",
		"--allow-privileged=true",
		"--profiling=false",
		// Tests create and delete many namespaces; a short event TTL keeps etcd small.
		"--event-ttl", "10m",
		"--v", "1",
	); err != nil {
		return err
	}
	adminCfg, err := clientcmd.BuildConfigFromFlags("", s.path(kubeconfig))
	if err != nil {
		return err
	}
	adminCfg.QPS, adminCfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(adminCfg)
	if err != nil {
		return err
	}
	if err := s.poll(ctx, "kube-apiserver /readyz", func() error {
		_, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err
	}); err != nil {
		return err
	}

	if err := s.spawn("kube-controller-manager", s.bin, "kube-controller-manager",
		"--kubeconfig", s.path("controller-manager.kubeconfig"),
		"--authentication-kubeconfig", s.path("controller-manager.kubeconfig"),
		"--authorization-kubeconfig", s.path("controller-manager.kubeconfig"),
		"--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(kcmPort),
		"--service-account-private-key-file", pki.file("sa.key"),
		"--root-ca-file", pki.file("ca.crt"),
		"--cluster-signing-cert-file", pki.file("ca.crt"),
		"--cluster-signing-key-file", pki.file("ca.key"),
		// Each controller runs as its own service account, with tokens from the TokenRequest API.
		"--use-service-account-credentials=true",
		"--leader-elect=false",
		"--controllers", "*",
		// A managed control plane's controllers are not held to client-go's default 20
		// requests a second; at that rate rolling out a thousand Deployments takes minutes.
		"--kube-api-qps", "100",
		"--kube-api-burst", "200",
		"--v", "1",
	); err != nil {
		return err
	}
	if err := s.spawn("kube-scheduler", s.bin, "kube-scheduler",
		"--kubeconfig", s.path("scheduler.kubeconfig"),
		"--authentication-kubeconfig", s.path("scheduler.kubeconfig"),
		"--authorization-kubeconfig", s.path("scheduler.kubeconfig"),
		"--bind-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(schedPort),
		"--leader-elect=false",
		"--v", "1",
	); err != nil {
		return err
	}
	if err := s.spawn("kwok", s.kwok,
		"--kubeconfig", s.path(kubeconfig),
		"--config", filepath.Join(filepath.Dir(s.bin), "kwok-stages.yaml"),
		"--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
		"--server-address", fmt.Sprintf("127.0.0.1:%d", kwokPort),
		"--node-ip", "127.0.0.1",
		"--cidr", "10.244.0.0/16",
	); err != nil {
		return err
	}

	for i := 0; i < fakeNodes; i++ {
		if err := createFakeNode(ctx, client, fmt.Sprintf("kwok-node-%d", i)); err != nil {
			return err
		}
	}
	// Ready when the fake nodes are Ready (kwok works) and the default service
	// account exists (the controller manager works and can mint tokens).
	if err := s.poll(ctx, "kwok nodes Ready", func() error {
		for i := 0; i < fakeNodes; i++ {
			n, err := client.CoreV1().Nodes().Get(ctx, fmt.Sprintf("kwok-node-%d", i), metav1.GetOptions{})
			if err != nil {
				return err
			}
			if !nodeReady(n) {
				return fmt.Errorf("node %s not Ready", n.Name)
			}
		}
		return nil
	}); err != nil {
		return err
	}
	return s.poll(ctx, "default ServiceAccount", func() error {
		_, err := client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err
	})
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func createFakeNode(ctx context.Context, client kubernetes.Interface, name string) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"kubernetes.io/role": "agent", "type": "kwok",
			},
		},
		Status: corev1.NodeStatus{
			Allocatable: corev1.ResourceList{},
			Capacity:    corev1.ResourceList{},
		},
	}
	for _, rl := range []corev1.ResourceList{node.Status.Allocatable, node.Status.Capacity} {
		rl[corev1.ResourceCPU] = mustQuantity("32")
		rl[corev1.ResourceMemory] = mustQuantity("256Gi")
		rl[corev1.ResourcePods] = mustQuantity("500")
	}
	_, err := client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	return err
}

// spawn starts a component with its output in logs/NAME.log. Pdeathsig makes the
// kernel kill it if the supervisor dies without cleaning up.
func (s *supervisor) spawn(name, bin string, args ...string) error {
	logf, err := os.OpenFile(s.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); logf.Close() }()
	s.procs = append(s.procs, p)
	return nil
}

// poll retries check until it passes; a component exiting meanwhile fails at once with its log tail.
func (s *supervisor) poll(ctx context.Context, what string, check func() error) error {
	var last error
	for {
		if last = check(); last == nil {
			return nil
		}
		for _, p := range s.procs {
			select {
			case err := <-p.done:
				p.done <- err
				return fmt.Errorf("%s exited while waiting for %s: %v\n%s", p.name, what, err, s.logTail(p.name))
			default:
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %v (last error: %v)", what, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (s *supervisor) wait(stop <-chan string) string {
	exited := make(chan string, len(s.procs))
	for _, p := range s.procs {
		go func(p *proc) {
			err := <-p.done
			p.done <- err
			exited <- fmt.Sprintf("%s exited: %v", p.name, err)
		}(p)
	}
	select {
	case r := <-stop:
		return r
	case r := <-exited:
		return r
	}
}

// stopAll stops components in reverse start order: SIGTERM, then SIGKILL after a grace period.
func (s *supervisor) stopAll() {
	for i := len(s.procs) - 1; i >= 0; i-- {
		p := s.procs[i]
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-p.done:
			p.done <- err
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			err := <-p.done
			p.done <- err
		}
	}
}

func (s *supervisor) logTail(name string) string {
	b, err := os.ReadFile(s.path("logs", name+".log"))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 30 {
		lines = lines[len(lines)-30:]
	}
	return strings.Join(lines, "\n")
}

func httpOK(c *http.Client, url string) error {
	if c == nil {
		c = &http.Client{Timeout: 2 * time.Second}
	}
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}

// freePorts asks the kernel for n distinct free loopback ports, holding all
// listeners open until every port is chosen so none repeats.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// runUp starts `supervise` detached from the terminal and returns once it is ready.
func runUp(args []string) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("up: --dir is required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(abs, "logs"), 0o700); err != nil {
		return err
	}
	if pid, err := readPid(abs); err == nil && syscall.Kill(pid, 0) == nil {
		return fmt.Errorf("a control plane is already running from %s (pid %d); run down first", abs, pid)
	}
	_ = os.Remove(filepath.Join(abs, readyFile))
	_ = os.Remove(filepath.Join(abs, failedFile))
	bin, err := os.Executable()
	if err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(abs, "logs", "supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(bin, "supervise", "--dir", abs)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(startBudget + 10*time.Second)
	for {
		if b, err := os.ReadFile(filepath.Join(abs, readyFile)); err == nil {
			fmt.Println(string(b))
			return nil
		}
		select {
		case err := <-exited:
			msg, _ := os.ReadFile(filepath.Join(abs, failedFile))
			return fmt.Errorf("control plane failed to start (%v): %s\nsee %s", err, msg, filepath.Join(abs, "logs"))
		case <-deadline:
			_ = cmd.Process.Signal(syscall.SIGTERM)
			return fmt.Errorf("control plane not ready in time; see %s", filepath.Join(abs, "logs"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func runDown(args []string) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("down: --dir is required")
	}
	pid, err := readPid(*dir)
	if err != nil {
		return nil // nothing running
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		return nil
	}
	for i := 0; i < 300; i++ {
		if syscall.Kill(pid, 0) != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

func readPid(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, pidFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}

// --- PKI -------------------------------------------------------------------

type pkiDir struct {
	dir    string
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	serial int64
}

func (p *pkiDir) file(name string) string { return filepath.Join(p.dir, name) }

func writePKI(dir string) (*pkiDir, error) {
	p := &pkiDir{dir: dir, serial: 1}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(p.serial),
		Subject:               pkix.Name{CommonName: "gitops-agent-test-ca"},
		NotBefore:             now,
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	p.ca, _ = x509.ParseCertificate(der)
	p.caKey = caKey
	if err := writePEM(p.file("ca.crt"), "CERTIFICATE", der); err != nil {
		return nil, err
	}
	if err := writeECKey(p.file("ca.key"), caKey); err != nil {
		return nil, err
	}
	// Serving certificate: loopback plus the in-cluster names of the kubernetes Service.
	if err := p.issue("apiserver", pkix.Name{CommonName: "kube-apiserver"}, true,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
		[]net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1"), net.ParseIP("10.0.0.1")}); err != nil {
		return nil, err
	}
	clients := map[string]pkix.Name{
		"admin":              {CommonName: "admin", Organization: []string{"system:masters"}},
		"controller-manager": {CommonName: "system:kube-controller-manager"},
		"scheduler":          {CommonName: "system:kube-scheduler"},
	}
	for name, subj := range clients {
		if err := p.issue(name, subj, false, nil, nil); err != nil {
			return nil, err
		}
	}
	// Service-account token signing key (RSA: what the apiserver's JWKS and most clients expect).
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	if err := writePEM(p.file("sa.key"), "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa)); err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	return p, writePEM(p.file("sa.pub"), "PUBLIC KEY", pub)
}

func (p *pkiDir) issue(name string, subj pkix.Name, server bool, dns []string, ips []net.IP) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	p.serial++
	now := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial),
		Subject:      subj,
		NotBefore:    now,
		NotAfter:     now.Add(5 * 365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     dns,
		IPAddresses:  ips,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		return err
	}
	if err := writePEM(p.file(name+".crt"), "CERTIFICATE", der); err != nil {
		return err
	}
	return writeECKey(p.file(name+".key"), key)
}

func writeECKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(path, "EC PRIVATE KEY", der)
}

func writePEM(path, typ string, der []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := pem.Encode(w, &pem.Block{Type: typ, Bytes: der}); err != nil {
		f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// writeKubeconfig embeds the certificates so the file stands alone.
func writeKubeconfig(path, server string, p *pkiDir, user string) error {
	read := func(n string) (string, error) {
		b, err := os.ReadFile(p.file(n))
		return string(b), err
	}
	ca, err := read("ca.crt")
	if err != nil {
		return err
	}
	crt, err := read(user + ".crt")
	if err != nil {
		return err
	}
	key, err := read(user + ".key")
	if err != nil {
		return err
	}
	cfg := clientcmdConfig(server, user, []byte(ca), []byte(crt), []byte(key))
	return clientcmd.WriteToFile(*cfg, path)
}
