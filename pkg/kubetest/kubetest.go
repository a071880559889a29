// Package kubetest runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver (and, when asked, kube-controller-manager) as processes on
// loopback, with random free ports, in a temporary directory. It is our own
// small envtest: no kubelet, no scheduler, no fakes.
//
// The control plane has a throwaway CA, an admin client certificate
// (O=system:masters), RBAC and Node authorization, the default admission
// plugins, and ServiceAccount token signing, so the TokenRequest API mints
// tokens (pod-bound ones too) and TokenReview validates them.
//
// Binaries come from $AMBIT_KUBE_BIN_DIR, else from the devcluster build
// cache (see docs/devcluster.md); `make kube-bins` builds them there. When
// they are missing, Start fails with an error naming that target: tests that
// need Kubernetes fail, they never skip.
//
// One control plane per test package is the usual shape:
//
//	func TestMain(m *testing.M) { os.Exit(kubetest.Main(m, kubetest.Options{})) }
//
//	func TestX(t *testing.T) {
//		env := kubetest.Shared(t)
//		ns := env.Namespace(t, "x-")
//		pod := env.RunningPod(t, kubetest.PodOptions{Namespace: ns, Name: "web", Node: "node-a", ServiceAccount: "web"})
//		token := env.Token(t, ns, "web", kubetest.TokenOptions{Audiences: []string{"istio-ca"}, Pod: pod})
//	}
package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Versions of the binaries this harness expects; they key the devcluster
// build cache (devcluster/scripts/lib.sh).
const (
	KubernetesVersion = "v1.36.3"
	EtcdVersion       = "v3.6.8"
)

// BinDirEnv names the environment variable that overrides where the
// binaries are found.
const BinDirEnv = "AMBIT_KUBE_BIN_DIR"

// MakeTarget is the make target that builds the binaries.
const MakeTarget = "make kube-bins"

// DefaultIssuer is the ServiceAccount token issuer, as in a real cluster.
const DefaultIssuer = "https://kubernetes.default.svc.cluster.local"

// serviceIP is the first address of the Service CIDR (the kubernetes Service).
const (
	serviceCIDR = "10.0.0.0/24"
	serviceIP   = "10.0.0.1"
)

// BinDir is where the binaries are looked for: $AMBIT_KUBE_BIN_DIR, else the
// devcluster cache ($DEVCLUSTER_CACHE or /var/cache/ambit-devcluster, then
// k8s-<version>-etcd-<version>/bin, as devcluster/scripts/lib.sh computes it),
// else .cache/kube-bins in the repository (where `make kube-bins` builds
// when the cache is not writable) if that holds kube-apiserver.
func BinDir() string {
	if d := os.Getenv(BinDirEnv); d != "" {
		return d
	}
	cache := os.Getenv("DEVCLUSTER_CACHE")
	if cache == "" {
		cache = "/var/cache/ambit-devcluster"
	}
	dir := filepath.Join(cache, "k8s-"+KubernetesVersion+"-etcd-"+EtcdVersion, "bin")
	if _, err := os.Stat(filepath.Join(dir, "kube-apiserver")); err != nil {
		if _, file, _, ok := runtime.Caller(0); ok {
			local := filepath.Join(filepath.Dir(file), "..", "..", ".cache", "kube-bins")
			if _, err := os.Stat(filepath.Join(local, "kube-apiserver")); err == nil {
				return filepath.Clean(local)
			}
		}
	}
	return dir
}

// Options configure a control plane.
type Options struct {
	// ControllerManager also runs kube-controller-manager (namespace
	// deletion, garbage collection, default ServiceAccounts, Deployments'
	// ReplicaSets and Pods, EndpointSlices...). Off by default: it costs a
	// second or two of startup and some CPU.
	ControllerManager bool
	// APIAudiences are the apiserver's own token audiences
	// (--api-audiences); default [DefaultIssuer].
	APIAudiences []string
	// StartTimeout bounds startup; default 90s (2 shared cores under -race
	// can be slow).
	StartTimeout time.Duration
	// ExtraAPIServerFlags are appended to kube-apiserver's command line.
	ExtraAPIServerFlags []string
}

// Env is a running control plane.
type Env struct {
	// Config authenticates as the admin (O=system:masters). Use
	// RESTConfig for a copy to modify.
	Config *rest.Config
	// Client is a clientset on Config.
	Client kubernetes.Interface
	// Dir holds certificates, the kubeconfig, data and logs.
	Dir string
	// Kubeconfig is an admin kubeconfig file for kubectl and friends.
	Kubeconfig string
	// Host is the apiserver's URL.
	Host string
	// Issuer and APIAudiences as passed to kube-apiserver.
	Issuer       string
	APIAudiences []string
	// CAPEM is the CA that signed the apiserver's serving certificate
	// (and the client certificates).
	CAPEM []byte

	mu      sync.Mutex
	procs   []*process // started order; stopped in reverse
	stopped bool
}

// RESTConfig returns a copy of the admin config.
func (e *Env) RESTConfig() *rest.Config { return rest.CopyConfig(e.Config) }

// Start brings a control plane up and waits until it serves (and, with
// ControllerManager, until the controllers run). On error nothing is left
// running and the directory is removed.
func Start(ctx context.Context, opts Options) (*Env, error) {
	if opts.StartTimeout <= 0 {
		opts.StartTimeout = 90 * time.Second
	}
	if len(opts.APIAudiences) == 0 {
		opts.APIAudiences = []string{DefaultIssuer}
	}
	bins := []string{"etcd", "kube-apiserver"}
	if opts.ControllerManager {
		bins = append(bins, "kube-controller-manager")
	}
	binDir := BinDir()
	if err := checkBinaries(binDir, bins); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancel()

	dir, err := os.MkdirTemp("", "kubetest-")
	if err != nil {
		return nil, fmt.Errorf("kubetest: temp dir: %w", err)
	}
	e := &Env{Dir: dir, Issuer: DefaultIssuer, APIAudiences: opts.APIAudiences}
	ok := false
	defer func() {
		if !ok {
			_ = e.Stop()
		}
	}()
	p, err := newPKI(dir)
	if err != nil {
		return nil, err
	}
	e.CAPEM = p.caPEM

	etcdURL, err := e.startEtcd(ctx, binDir)
	if err != nil {
		return nil, err
	}
	if err := e.startAPIServer(ctx, binDir, p, etcdURL, opts); err != nil {
		return nil, err
	}
	if err := e.writeKubeconfig(p); err != nil {
		return nil, err
	}
	if opts.ControllerManager {
		if err := e.startControllerManager(ctx, binDir, p); err != nil {
			return nil, err
		}
	}
	ok = true
	return e, nil
}

// Stop kills every process and removes the directory. Safe to call twice.
func (e *Env) Stop() error {
	e.mu.Lock()
	if e.stopped {
		e.mu.Unlock()
		return nil
	}
	e.stopped = true
	procs := e.procs
	e.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].stop()
	}
	if e.Dir != "" {
		if err := os.RemoveAll(e.Dir); err != nil {
			errs = append(errs, fmt.Errorf("kubetest: remove %s: %w", e.Dir, err))
		}
	}
	return errors.Join(errs...)
}

func checkBinaries(dir string, names []string) error {
	var missing []string
	for _, n := range names {
		st, err := os.Stat(filepath.Join(dir, n))
		if err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("kubetest: %s missing from %s: run `%s` (builds etcd %s, kube-apiserver and kube-controller-manager %s there; ~5 min cold, a no-op when cached) or set %s to a directory holding them",
			strings.Join(missing, ", "), dir, MakeTarget, EtcdVersion, KubernetesVersion, BinDirEnv)
	}
	return nil
}

// freePorts reserves n distinct loopback ports by listening and closing.
// Another process may take one in between; callers retry on failure.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("kubetest: free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// startAttempts is how often a component is started on fresh ports when it
// exits during startup (usually a port taken between reservation and bind).
const startAttempts = 3

func (e *Env) startEtcd(ctx context.Context, binDir string) (string, error) {
	var lastErr error
	for attempt := range startAttempts {
		ports, err := freePorts(2)
		if err != nil {
			return "", err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		dataDir := filepath.Join(e.Dir, "etcd-"+strconv.Itoa(attempt))
		p, err := e.spawn("etcd", filepath.Join(binDir, "etcd"),
			"--name=kubetest",
			"--data-dir="+dataDir,
			"--listen-client-urls="+clientURL,
			"--advertise-client-urls="+clientURL,
			"--listen-peer-urls="+peerURL,
			"--initial-advertise-peer-urls="+peerURL,
			"--initial-cluster=kubetest="+peerURL,
			"--unsafe-no-fsync",
			"--quota-backend-bytes=2147483648",
			"--log-level=warn",
		)
		if err != nil {
			return "", err
		}
		hc := &http.Client{Timeout: 2 * time.Second}
		lastErr = p.waitReady(ctx, func(ctx context.Context) error {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL+"/health", nil)
			if err != nil {
				return err
			}
			resp, err := hc.Do(req)
			if err != nil {
				return err
			}
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !bytes.Contains(body, []byte(`"true"`)) {
				return fmt.Errorf("etcd /health: %d %s", resp.StatusCode, body)
			}
			return nil
		})
		if lastErr == nil {
			return clientURL, nil
		}
		p.stop()
		if ctx.Err() != nil || !p.exited() {
			break
		}
	}
	return "", lastErr
}

func (e *Env) startAPIServer(ctx context.Context, binDir string, p *pki, etcdURL string, opts Options) error {
	var lastErr error
	for range startAttempts {
		ports, err := freePorts(1)
		if err != nil {
			return err
		}
		host := "https://127.0.0.1:" + strconv.Itoa(ports[0])
		args := []string{
			"--etcd-servers=" + etcdURL,
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(ports[0]),
			"--cert-dir=" + filepath.Join(e.Dir, "apiserver-certs"),
			"--tls-cert-file=" + p.servingCert,
			"--tls-private-key-file=" + p.servKy,
			"--client-ca-file=" + p.caCert,
			"--service-account-issuer=" + e.Issuer,
			"--service-account-key-file=" + p.saPub,
			"--service-account-signing-key-file=" + p.saKey,
			"--api-audiences=" + strings.Join(opts.APIAudiences, ","),
			"--authorization-mode=Node,RBAC",
			"--service-cluster-ip-range=" + serviceCIDR,
			"--allow-privileged=true",
			"--endpoint-reconciler-type=none",
			"--enable-priority-and-fairness=false",
			"--profiling=false",
			"--event-ttl=10m",
			"--v=1",
		}
		args = append(args, opts.ExtraAPIServerFlags...)
		proc, err := e.spawn("kube-apiserver", filepath.Join(binDir, "kube-apiserver"), args...)
		if err != nil {
			return err
		}
		cfg := &rest.Config{
			Host: host,
			TLSClientConfig: rest.TLSClientConfig{
				CAData:   p.caPEM,
				CertData: p.adminCertPEM,
				KeyData:  p.adminKeyPEM,
			},
			QPS:       200,
			Burst:     400,
			UserAgent: "kubetest",
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return fmt.Errorf("kubetest: client: %w", err)
		}
		lastErr = proc.waitReady(ctx, func(ctx context.Context) error {
			body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
			if err != nil {
				return fmt.Errorf("/readyz: %w: %s", err, body)
			}
			return nil
		})
		if lastErr == nil {
			e.Config, e.Client, e.Host = cfg, client, host
			return nil
		}
		proc.stop()
		if ctx.Err() != nil || !proc.exited() {
			break
		}
	}
	return lastErr
}

func (e *Env) writeKubeconfig(p *pki) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{Server: e.Host, CertificateAuthorityData: p.caPEM}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: p.adminCertPEM, ClientKeyData: p.adminKeyPEM}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "admin"}
	kc.CurrentContext = "kubetest"
	e.Kubeconfig = filepath.Join(e.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, e.Kubeconfig); err != nil {
		return fmt.Errorf("kubetest: write kubeconfig: %w", err)
	}
	return nil
}

func (e *Env) startControllerManager(ctx context.Context, binDir string, p *pki) error {
	proc, err := e.spawn("kube-controller-manager", filepath.Join(binDir, "kube-controller-manager"),
		"--kubeconfig="+e.Kubeconfig,
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--service-account-private-key-file="+p.saKey,
		"--root-ca-file="+p.caCert,
		"--cluster-signing-cert-file="+p.caCert,
		"--cluster-signing-key-file="+p.caKey,
		"--use-service-account-credentials=false",
		"--controllers=*,-node-ipam-controller,-node-lifecycle-controller,-service-lb-controller,-node-route-controller,-cloud-node-lifecycle-controller",
		"--concurrent-gc-syncs=5",
		"--v=1",
	)
	if err != nil {
		return err
	}
	// The ServiceAccount controller creating "default" in "default" shows
	// the controllers run.
	return proc.waitReady(ctx, func(ctx context.Context) error {
		_, err := e.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metaGetOptions)
		return err
	})
}

// process is one child process with its log file.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

func (e *Env) spawn(name, bin string, args ...string) (*process, error) {
	logPath := filepath.Join(e.Dir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("kubetest: %s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = e.Dir
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, fmt.Errorf("kubetest: start %s: %w", name, err)
	}
	p := &process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		_ = logFile.Close()
		close(p.done)
	}()
	e.mu.Lock()
	e.procs = append(e.procs, p)
	e.mu.Unlock()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitReady polls check until it succeeds, the process exits, or ctx ends;
// errors carry the tail of the process's log.
func (p *process) waitReady(ctx context.Context, check func(context.Context) error) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = check(cctx)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("kubetest: %s exited during startup (%v); log %s:\n%s", p.name, p.waitErr, p.logPath, p.logTail())
		case <-ctx.Done():
			return fmt.Errorf("kubetest: %s not ready: %w (last check: %v); log %s:\n%s", p.name, ctx.Err(), last, p.logPath, p.logTail())
		case <-tick.C:
		}
	}
}

func (p *process) logTail() string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	const max = 4000
	if len(data) > max {
		data = data[len(data)-max:]
	}
	return string(data)
}

// stop kills the process group and waits for the process. There is
// nothing to drain or keep: the data directory is removed next.
func (p *process) stop() {
	if p.exited() {
		return
	}
	signalGroup(p.cmd, syscall.SIGKILL)
	<-p.done
}
