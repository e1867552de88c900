// Command lss-cluster runs a real Kubernetes control plane in one process
// for LLMSafeSpace's tests: etcd, kube-apiserver, kube-controller-manager
// (the controllers the product relies on) and kube-scheduler, all built
// from the Kubernetes release modules. It writes its certificates and
// kubeconfigs into --dir, a "ready" file once the API answers, and stops
// cleanly on SIGTERM or SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
)

func main() {
	dir := flag.String("dir", "", "directory for certificates, kubeconfigs, etcd data and logs (required)")
	port := flag.Int("port", 0, "API server port on 127.0.0.1 (0: a free one)")
	timeout := flag.Duration("ready-timeout", 3*time.Minute, "give up when not ready within this")
	flag.Parse()
	if *dir == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: lss-cluster --dir DIR [--port N] [--ready-timeout D]")
		os.Exit(2)
	}
	if err := run(*dir, *port, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "lss-cluster:", err)
		os.Exit(1)
	}
}

func run(dir string, port int, timeout time.Duration) error {
	if err := prepare(dir); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(dir, "control-plane.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	if err := logTo(logf); err != nil {
		return err
	}
	defer klog.Flush()

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		return err
	}
	server := "https://" + ln.Addr().String()
	p, err := writePKI(dir, server)
	if err != nil {
		ln.Close()
		return err
	}

	etcd, etcdURL, err := startEtcd(dir)
	if err != nil {
		ln.Close()
		return err
	}
	defer etcd.Close()

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)

	// The API server outlives the components that talk to it, so they
	// stop without errors on a vanished server.
	apiCtx, stopAPI := context.WithCancel(context.Background())
	defer stopAPI()
	apiDone := make(chan error, 1)
	if err := runAPIServer(apiCtx, p, ln, etcdURL, apiDone); err != nil {
		ln.Close()
		return err
	}
	client, err := adminClient(p)
	if err != nil {
		return err
	}
	if err := waitReady(apiCtx, client, apiDone, sig, timeout); err != nil {
		return err
	}

	ctx, stop := context.WithCancel(apiCtx)
	defer stop()
	kcmDone := make(chan error, 1)
	schedDone := make(chan error, 1)
	if err := runControllerManager(ctx, p, kcmDone); err != nil {
		return err
	}
	if err := runScheduler(ctx, p, schedDone); err != nil {
		return err
	}
	if err := waitServiceAccount(ctx, client, kcmDone, sig, timeout); err != nil {
		return err
	}

	// renamed into place: a reader never sees it half written
	ready := filepath.Join(dir, "ready")
	if err := os.WriteFile(ready+".tmp", []byte(server+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Rename(ready+".tmp", ready); err != nil {
		return err
	}
	fmt.Printf("ready %s kubeconfig=%s\n", server, p.path("kubeconfig"))

	var failed error
	select {
	case s := <-sig:
		klog.Infof("lss-cluster: %v, stopping", s)
	case err := <-apiDone:
		failed = fmt.Errorf("kube-apiserver stopped: %v", err)
		apiDone <- nil
	case err := <-kcmDone:
		failed = fmt.Errorf("kube-controller-manager stopped: %v", err)
		kcmDone <- nil
	case err := <-schedDone:
		failed = fmt.Errorf("kube-scheduler stopped: %v", err)
		schedDone <- nil
	}
	os.Remove(ready)
	stop()
	wait("kube-scheduler", schedDone)
	wait("kube-controller-manager", kcmDone)
	stopAPI()
	wait("kube-apiserver", apiDone)
	return failed
}

// logTo sends every component's klog lines to w, each line once, and
// nothing to stderr: the tests read the file when something fails.
func logTo(w io.Writer) error {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	for k, v := range map[string]string{"logtostderr": "false",
		"one_output": "true", "stderrthreshold": "FATAL"} {
		if err := fs.Set(k, v); err != nil {
			return err
		}
	}
	klog.SetOutput(w)
	return nil
}

// prepare empties what a previous run left in dir: each run is a new
// cluster.
func prepare(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, name := range []string{"etcd", "ready"} {
		if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	return nil
}

// writePKI writes the CA, the serving certificate, one client
// certificate and kubeconfig per component and one for the tests
// (kubeconfig: user kubernetes-admin in system:masters), and the service
// account key pair.
func writePKI(dir, server string) (*pki, error) {
	p, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	if err := p.issue("apiserver", "kube-apiserver", nil, servingNames, servingIPs); err != nil {
		return nil, err
	}
	users := []struct{ name, cn, org string }{
		{"admin", "kubernetes-admin", "system:masters"},
		{"controller-manager", "system:kube-controller-manager", ""},
		{"scheduler", "system:kube-scheduler", ""},
	}
	for _, u := range users {
		var orgs []string
		if u.org != "" {
			orgs = []string{u.org}
		}
		if err := p.issue(u.name, u.cn, orgs, nil, nil); err != nil {
			return nil, err
		}
		file := u.name + ".kubeconfig"
		if u.name == "admin" {
			file = "kubeconfig"
		}
		if err := p.kubeconfig(file, u.name, server); err != nil {
			return nil, err
		}
	}
	return p, p.serviceAccountKey()
}

func adminClient(p *pki) (*kubernetes.Clientset, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", p.path("kubeconfig"))
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

// waitReady waits until /readyz answers ok and the default namespace
// exists (the API server's own bootstrap is done).
func waitReady(ctx context.Context, c *kubernetes.Clientset, done chan error,
	sig <-chan os.Signal, timeout time.Duration) error {
	return poll(ctx, done, sig, timeout, "kube-apiserver /readyz", func() bool {
		body, err := c.RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil || string(body) != "ok" {
			return false
		}
		_, err = c.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		return err == nil
	})
}

// waitServiceAccount waits for the default ServiceAccount of namespace
// default: kube-controller-manager's controllers are running.
func waitServiceAccount(ctx context.Context, c *kubernetes.Clientset,
	done chan error, sig <-chan os.Signal, timeout time.Duration) error {
	return poll(ctx, done, sig, timeout, "the default ServiceAccount", func() bool {
		_, err := c.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			klog.Infof("lss-cluster: waiting: %v", err)
		}
		return err == nil
	})
}

func poll(ctx context.Context, done chan error, sig <-chan os.Signal,
	timeout time.Duration, what string, ok func() bool) error {
	deadline := time.After(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for !ok() {
		select {
		case err := <-done:
			return fmt.Errorf("stopped while waiting for %s: %v", what, err)
		case s := <-sig:
			return fmt.Errorf("%v while waiting for %s", s, what)
		case <-deadline:
			return fmt.Errorf("no %s after %v", what, timeout)
		case <-tick.C:
		}
	}
	return nil
}

// wait gives a component 30 s to return after its context ended. What it
// returns then is logged only: the scheduler, for one, always returns an
// error when stopped without leader election.
func wait(name string, done <-chan error) {
	select {
	case err := <-done:
		klog.Infof("lss-cluster: %s stopped: %v", name, err)
	case <-time.After(30 * time.Second):
		klog.Errorf("lss-cluster: %s did not stop within 30 s", name)
	}
}
