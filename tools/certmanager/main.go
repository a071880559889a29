// Command cert-manager-controller runs cert-manager's own controllers
// (github.com/cert-manager/cert-manager/pkg/controller and the issuer
// implementations under pkg/issuer) against a Kubernetes apiserver, for
// ambit's tests of the cert-manager signing backend.
//
// Why a launcher of our own: cert-manager's controller main package lives in
// the nested module github.com/cert-manager/cert-manager/cmd/controller,
// which depends on the root module through a relative replace directive and
// is therefore not published on the Go module proxy. The controllers
// themselves (CertificateRequest signers, the approver, the Issuer and
// ClusterIssuer readiness controllers) are in the root module and register
// themselves with pkg/controller when imported; this command builds their
// shared controller context with pkg/controller.NewContextFactory, as
// cert-manager's main does, starts the shared informers and runs the
// selected controllers. It leaves out what ambit's tests do not need:
// leader election, the metrics and health servers, ACME HTTP-01 solvers and
// the Gateway API shim.
//
// The flags carry the names of cert-manager's controller flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"

	"k8s.io/klog/v2"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Controllers register themselves with controllerpkg when imported.
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	_ "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	_ "github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	_ "github.com/cert-manager/cert-manager/pkg/controller/issuers"

	// Issuer types the Issuer/ClusterIssuer controllers set up.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"
)

// defaultControllers are what a CA or self-signed Issuer needs to sign
// CertificateRequests: readiness of the issuers, approval, and signing.
var defaultControllers = []string{
	"issuers",
	"clusterissuers",
	"certificaterequests-approver",
	"certificaterequests-issuer-ca",
	"certificaterequests-issuer-selfsigned",
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "cert-manager-controller: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("cert-manager-controller", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig file of the apiserver (default: in-cluster configuration)")
	master := fs.String("master", "", "apiserver URL, overriding the kubeconfig's")
	controllers := fs.String("controllers", strings.Join(defaultControllers, ","), "comma-separated controllers to run; known: "+strings.Join(known(), ","))
	clusterResourceNS := fs.String("cluster-resource-namespace", "kube-system", "namespace of the Secrets that ClusterIssuers refer to")
	namespace := fs.String("namespace", "", "watch only this namespace (default: all)")
	leaderElect := fs.Bool("leader-elect", false, "not supported by this launcher; must be false")
	workers := fs.Int("concurrent-workers", 5, "workers per controller")
	qps := fs.Float64("kube-api-qps", 50, "client QPS when the apiserver does not enforce priority and fairness")
	burst := fs.Int("kube-api-burst", 100, "client burst")
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	fs.Var(flagValue{klogFlags.Lookup("v")}, "v", "log verbosity (cert-manager's debug level is 4)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *leaderElect {
		return errors.New("--leader-elect=true is not supported: run a single instance with --leader-elect=false")
	}
	names := splitList(*controllers)
	if len(names) == 0 {
		return errors.New("--controllers: none given")
	}
	for _, n := range names {
		if _, ok := controllerpkg.Known()[n]; !ok {
			return fmt.Errorf("--controllers: unknown controller %q (known: %s)", n, strings.Join(known(), ","))
		}
	}
	logf.InitLogs()
	defer logf.FlushLogs()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = logf.NewContext(ctx, klog.Background(), "cert-manager-controller")

	factory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		APIServerHost:      *master,
		Kubeconfig:         *kubeconfig,
		KubernetesAPIQPS:   float32(*qps),
		KubernetesAPIBurst: *burst,
		Namespace:          *namespace,
		IssuerOptions:      controllerpkg.IssuerOptions{ClusterResourceNamespace: *clusterResourceNS},
	})
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	// Constructing a controller registers the informers it needs with the
	// shared factories, so every controller is built before they start.
	ifaces := make(map[string]controllerpkg.Interface, len(names))
	for _, n := range names {
		c, err := controllerpkg.Known()[n](factory)
		if err != nil {
			return fmt.Errorf("controller %s: %w", n, err)
		}
		ifaces[n] = c
	}
	shared, err := factory.Build("informers")
	if err != nil {
		return fmt.Errorf("controller context: %w", err)
	}
	shared.KubeSharedInformerFactory.Start(ctx.Done())
	shared.SharedInformerFactory.Start(ctx.Done())

	klog.InfoS("starting controllers", "controllers", names, "clusterResourceNamespace", *clusterResourceNS)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for n, c := range ifaces {
		wg.Go(func() {
			if err := c.Run(*workers, ctx); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("controller %s: %w", n, err))
				mu.Unlock()
				stop() // one failed controller stops the process
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func known() []string {
	var out []string
	for n := range controllerpkg.Known() {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func splitList(s string) []string {
	var out []string
	for p := range strings.SplitSeq(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// flagValue exposes one klog flag on our flag set.
type flagValue struct{ f *flag.Flag }

func (v flagValue) String() string {
	if v.f == nil {
		return ""
	}
	return v.f.Value.String()
}
func (v flagValue) Set(s string) error { return v.f.Value.Set(s) }
