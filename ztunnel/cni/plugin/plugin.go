// Package plugin is the ambit CNI plugin: a thin chained plugin that tells
// the node's ztunnel about each pod sandbox (ADD, DEL, CHECK) over the
// enrollment socket (package wire) and always passes the previous plugin's
// result through unchanged. The ztunnel decides whether the pod is captured
// and, if so, enrolls it before answering ADD.
//
// When the ztunnel cannot be reached, the plugin decides from the namespace
// state file the ztunnel keeps on the host: a pod in a namespace listed as
// ambient fails (its sandbox must not start uncaptured; the kubelet retries),
// any other pod passes. Without a readable state file, pods fail too, except
// in the excluded namespaces (kube-system and the ztunnel's own by
// default). See docs/enrollment.md.
package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambit-mesh/ambit/ztunnel/enroll/wire"
)

// PluginType is the plugin's "type" in a network configuration, and its
// binary's name.
const PluginType = "ambit-cni"

// DefaultTimeout bounds one exchange with the ztunnel.
const DefaultTimeout = 20 * time.Second

// DefaultExcludeNamespaces are never sent to the ztunnel.
var DefaultExcludeNamespaces = []string{"kube-system"}

// Config is the plugin's network configuration (stdin).
type Config struct {
	types.PluginConf
	// SocketPath is the ztunnel's enrollment socket (wire.DefaultSocketPath
	// when empty).
	SocketPath string `json:"socketPath,omitempty"`
	// StateFile is the ztunnel's namespace state file
	// (wire.DefaultStatePath when empty).
	StateFile string `json:"stateFile,omitempty"`
	// Timeout bounds one exchange with the ztunnel: a Go duration string
	// ("20s") or a number of seconds. DefaultTimeout when absent.
	Timeout Duration `json:"timeout,omitempty"`
	// LogFile, when set, receives the plugin's log lines (appended);
	// otherwise they go to stderr.
	LogFile string `json:"logFile,omitempty"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"logLevel,omitempty"`
	// ExcludeNamespaces are passed through without asking the ztunnel,
	// whatever their labels (DefaultExcludeNamespaces when absent; the
	// installer adds the ztunnel's own namespace, so that the ztunnel's pod
	// can always start).
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
}

// Duration is a time.Duration written as "20s" or as a number of seconds.
type Duration time.Duration

// UnmarshalJSON accepts a duration string or a number of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("timeout: %w", err)
		}
		*d = Duration(v)
		return nil
	}
	var n float64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("timeout: want a duration string or seconds, got %s", b)
	}
	*d = Duration(n * float64(time.Second))
	return nil
}

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// parsed is one invocation's configuration and arguments.
type parsed struct {
	conf    Config
	rawPrev json.RawMessage // the previous result exactly as received
	ips     []netip.Addr
	pod     wire.Pod
	k8s     bool // CNI_ARGS named a Kubernetes pod
}

// ParseConfig decodes and checks stdin's network configuration.
func ParseConfig(stdin []byte) (*Config, error) {
	var conf Config
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return nil, fmt.Errorf("%s: parse network configuration: %w", PluginType, err)
	}
	if conf.Timeout < 0 {
		return nil, fmt.Errorf("%s: timeout must not be negative", PluginType)
	}
	if conf.Timeout == 0 {
		conf.Timeout = Duration(DefaultTimeout)
	}
	if conf.SocketPath == "" {
		conf.SocketPath = wire.DefaultSocketPath
	}
	if conf.StateFile == "" {
		conf.StateFile = wire.DefaultStatePath
	}
	if conf.ExcludeNamespaces == nil {
		conf.ExcludeNamespaces = slices.Clone(DefaultExcludeNamespaces)
	}
	return &conf, nil
}

func parse(args *skel.CmdArgs, needPrev bool) (*parsed, error) {
	conf, err := ParseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	p := &parsed{conf: *conf}
	var raw struct {
		PrevResult json.RawMessage `json:"prevResult"`
	}
	if err := json.Unmarshal(args.StdinData, &raw); err != nil {
		return nil, fmt.Errorf("%s: parse network configuration: %w", PluginType, err)
	}
	if len(raw.PrevResult) == 0 || string(raw.PrevResult) == "null" {
		if needPrev {
			return nil, fmt.Errorf("%s: no prevResult: the plugin must be chained after the primary CNI plugin", PluginType)
		}
	} else {
		p.rawPrev = raw.PrevResult
		if err := version.ParsePrevResult(&p.conf.PluginConf); err != nil {
			return nil, fmt.Errorf("%s: %w", PluginType, err)
		}
		res, err := types100.NewResultFromResult(p.conf.PrevResult)
		if err != nil {
			return nil, fmt.Errorf("%s: convert prevResult: %w", PluginType, err)
		}
		for _, ipc := range res.IPs {
			if ipc == nil {
				continue
			}
			if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
				p.ips = append(p.ips, a.Unmap())
			}
		}
	}
	kv := parseCNIArgs(args.Args)
	p.pod = wire.Pod{
		Namespace:   kv["K8S_POD_NAMESPACE"],
		Name:        kv["K8S_POD_NAME"],
		UID:         kv["K8S_POD_UID"],
		ContainerID: args.ContainerID,
		Netns:       args.Netns,
		IPs:         p.ips,
	}
	p.k8s = p.pod.Namespace != "" && p.pod.Name != ""
	return p, nil
}

// parseCNIArgs splits CNI_ARGS ("K=V;K=V"); malformed parts are ignored.
func parseCNIArgs(s string) map[string]string {
	out := make(map[string]string)
	for part := range strings.SplitSeq(s, ";") {
		k, v, ok := strings.Cut(part, "=")
		if ok && k != "" {
			out[k] = v
		}
	}
	return out
}

// Plugin runs the CNI commands. The zero value writes to os.Stdout and logs
// where the configuration says.
type Plugin struct {
	// Stdout receives ADD's result (os.Stdout when nil).
	Stdout io.Writer
	// Log, when set, is used instead of the configuration's logFile.
	Log *slog.Logger
}

func (pl *Plugin) logger(conf *Config) (*slog.Logger, func()) {
	if pl.Log != nil {
		return pl.Log, func() {}
	}
	level := slog.LevelInfo
	switch strings.ToLower(conf.LogLevel) {
	case "debug":
		level = slog.LevelDebug
	case "warn", "warning":
		level = slog.LevelWarn
	case "error":
		level = slog.LevelError
	}
	var w io.Writer = os.Stderr
	closer := func() {}
	if conf.LogFile != "" {
		f, err := os.OpenFile(conf.LogFile, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err == nil {
			w = f
			closer = func() { _ = f.Close() }
		}
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})).With("plugin", PluginType, "pid", os.Getpid()), closer
}

func (pl *Plugin) stdout() io.Writer {
	if pl.Stdout != nil {
		return pl.Stdout
	}
	return os.Stdout
}

// passThrough writes the previous result unchanged.
func (pl *Plugin) passThrough(p *parsed) error {
	out := append(slices.Clone([]byte(p.rawPrev)), '\n')
	if _, err := pl.stdout().Write(out); err != nil {
		return fmt.Errorf("%s: write result: %w", PluginType, err)
	}
	return nil
}

func (pl *Plugin) client(conf *Config) *wire.Client {
	return &wire.Client{Path: conf.SocketPath, Timeout: time.Duration(conf.Timeout)}
}

// CmdAdd handles ADD: the ztunnel enrolls the pod if it is captured; the
// previous result is passed through.
func (pl *Plugin) CmdAdd(args *skel.CmdArgs) error {
	p, err := parse(args, true)
	if err != nil {
		return err
	}
	log, done := pl.logger(&p.conf)
	defer done()
	log = log.With("cmd", "ADD", "container", args.ContainerID, "pod", p.pod.Namespace+"/"+p.pod.Name)
	if skip, why := p.skip(); skip {
		log.Debug("passing through", "reason", why)
		return pl.passThrough(p)
	}
	start := time.Now()
	resp, err := pl.client(&p.conf).Do(context.Background(), wire.Request{Op: wire.OpAdd, Pod: p.pod})
	switch {
	case err == nil:
		log.Info("ztunnel answered", "status", resp.Status, "took", time.Since(start))
		return pl.passThrough(p)
	case wire.IsUnavailable(err):
		if ferr := p.fallback(err); ferr != nil {
			log.Error("failing pod sandbox: ztunnel unavailable and pod must be captured", "err", ferr)
			return ferr
		}
		log.Warn("ztunnel unavailable; namespace is not ambient, passing through", "err", err)
		return pl.passThrough(p)
	default:
		log.Error("ztunnel refused the pod", "err", err)
		return fmt.Errorf("%s: %w", PluginType, err)
	}
}

// CmdDel handles DEL: the ztunnel releases the pod. DEL never fails because
// of the ztunnel (a failing DEL blocks the pod's deletion); a missed release
// is cleaned up by the ztunnel's reconciliation.
func (pl *Plugin) CmdDel(args *skel.CmdArgs) error {
	p, err := parse(args, false)
	if err != nil {
		return err
	}
	log, done := pl.logger(&p.conf)
	defer done()
	log = log.With("cmd", "DEL", "container", args.ContainerID, "pod", p.pod.Namespace+"/"+p.pod.Name)
	if skip, why := p.skip(); skip {
		log.Debug("nothing to do", "reason", why)
		return nil
	}
	resp, err := pl.client(&p.conf).Do(context.Background(), wire.Request{Op: wire.OpDel, Pod: p.pod})
	if err != nil {
		log.Warn("ztunnel did not release the pod; its reconciliation will", "err", err)
		return nil
	}
	log.Info("ztunnel answered", "status", resp.Status)
	return nil
}

// CmdCheck handles CHECK: the ztunnel verifies a captured pod's enrollment.
func (pl *Plugin) CmdCheck(args *skel.CmdArgs) error {
	p, err := parse(args, false)
	if err != nil {
		return err
	}
	log, done := pl.logger(&p.conf)
	defer done()
	log = log.With("cmd", "CHECK", "container", args.ContainerID, "pod", p.pod.Namespace+"/"+p.pod.Name)
	if skip, _ := p.skip(); skip {
		return nil
	}
	_, err = pl.client(&p.conf).Do(context.Background(), wire.Request{Op: wire.OpCheck, Pod: p.pod})
	switch {
	case err == nil:
		return nil
	case wire.IsUnavailable(err):
		if ferr := p.fallback(err); ferr != nil {
			log.Error("check failed", "err", ferr)
			return ferr
		}
		return nil
	default:
		log.Error("check failed", "err", err)
		return fmt.Errorf("%s: %w", PluginType, err)
	}
}

// skip reports invocations the ztunnel is never asked about.
func (p *parsed) skip() (bool, string) {
	if !p.k8s {
		return true, "CNI_ARGS name no Kubernetes pod"
	}
	if slices.Contains(p.conf.ExcludeNamespaces, p.pod.Namespace) {
		return true, "namespace excluded"
	}
	return false, ""
}

// fallback decides, when the ztunnel is unavailable, whether the command
// fails (non-nil) or passes.
func (p *parsed) fallback(cause error) error {
	st, err := wire.ReadNamespaceState(p.conf.StateFile)
	if err != nil {
		return fmt.Errorf("%s: %w; and no namespace state to tell whether namespace %q is ambient (%v): failing closed, the kubelet retries",
			PluginType, cause, p.pod.Namespace, err)
	}
	if st.IsAmbient(p.pod.Namespace) {
		return fmt.Errorf("%s: %w; namespace %q is ambient (state of %s): failing so that the pod does not start uncaptured, the kubelet retries",
			PluginType, cause, p.pod.Namespace, st.Updated.Format(time.RFC3339))
	}
	return nil
}

// VersionInfo is the CNI spec versions the plugin supports.
var VersionInfo = version.All

// Main runs the plugin as a CNI binary.
func Main(buildVersion string) {
	pl := &Plugin{}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: pl.CmdAdd, Del: pl.CmdDel, Check: pl.CmdCheck},
		VersionInfo, "ambit CNI plugin "+buildVersion)
}
