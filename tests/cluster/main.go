// Command k8s-local is a multi-call binary holding the official Kubernetes
// control-plane components (one link, one cache entry) plus a small supervisor
// that starts them on loopback for gitops-agent's end-to-end tests.
//
//	k8s-local etcd --data-dir D --listen-client URL --listen-peer URL
//	k8s-local kube-apiserver|kube-controller-manager|kube-scheduler [flags]
//	k8s-local supervise --dir D     (foreground; exits when stdin closes with --exit-with-stdin)
//	k8s-local up --dir D | down --dir D
package main

import (
	"fmt"
	"os"
	_ "time/tzdata" // CronJob time zones, as in the upstream mains

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: k8s-local etcd|kube-apiserver|kube-controller-manager|kube-scheduler|supervise|up|down [flags]")
		os.Exit(2)
	}
	sub, rest := os.Args[1], os.Args[2:]
	// The component commands parse os.Args[1:] themselves.
	os.Args = append([]string{"k8s-local " + sub}, rest...)
	switch sub {
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "etcd":
		exitOn(runEtcd(rest))
	case "supervise":
		exitOn(runSupervise(rest))
	case "up":
		exitOn(runUp(rest))
	case "down":
		exitOn(runDown(rest))
	case "version":
		fmt.Println(kubeVersion())
	default:
		fmt.Fprintf(os.Stderr, "k8s-local: unknown command %q\n", sub)
		os.Exit(2)
	}
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "k8s-local:", err)
		os.Exit(1)
	}
	os.Exit(0)
}
