// Package install puts the ambit CNI plugin on a node: it copies the plugin
// binary into the host's CNI bin directory and chains the plugin as the last
// entry of the primary network configuration in the host's CNI conf
// directory, keeps both in place while it runs (the primary CNI may rewrite
// its configuration at any time), and optionally removes them on exit. It is
// what the ztunnel DaemonSet's installer container runs.
//
// The primary configuration is the one the container runtime uses: the first
// *.conf, *.conflist or *.json file of the conf directory in lexical order
// (unless Config.PrimaryConfName names it). A single-plugin .conf (or .json)
// is converted to a .conflist of the same base name with the original
// plugin first, and the original file is removed. Every write is a temporary
// file in the same directory renamed over the target, so the runtime never
// reads a partial file.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// PluginType is the "type" of our entry (and the binary's name).
const PluginType = "ambit-cni"

// Entry is the plugin's configuration written into the conflist (see
// ztunnel/cni/plugin.Config); empty fields are left out, and the plugin's
// defaults apply.
type Entry struct {
	SocketPath        string   `json:"socketPath,omitempty"`
	StateFile         string   `json:"stateFile,omitempty"`
	Timeout           string   `json:"timeout,omitempty"`
	LogFile           string   `json:"logFile,omitempty"`
	LogLevel          string   `json:"logLevel,omitempty"`
	ExcludeNamespaces []string `json:"excludeNamespaces,omitempty"`
}

// Config configures an Installer.
type Config struct {
	// PluginBinary is the plugin binary to install (in the installer's
	// image). Required.
	PluginBinary string
	// BinDir is the host's CNI bin directory as mounted (/opt/cni/bin on
	// the host). Required.
	BinDir string
	// ConfDir is the host's CNI conf directory as mounted (/etc/cni/net.d
	// on the host). Required.
	ConfDir string
	// PrimaryConfName, when set, is the file name of the primary
	// configuration; otherwise it is the first configuration file in
	// lexical order, as the container runtime chooses.
	PrimaryConfName string
	// Entry is our plugin's configuration.
	Entry Entry
	// CleanupOnExit makes Run remove our entry and binary when it returns.
	CleanupOnExit bool
	// ResyncInterval is how often Run re-checks everything even without a
	// file system event (30s when zero).
	ResyncInterval time.Duration
	// Log receives what the installer does (slog.Default when nil).
	Log *slog.Logger
}

// Result is what one Install pass did.
type Result struct {
	// ConfFile is the primary configuration file, now holding our entry.
	ConfFile string
	// ConfChanged reports that ConfFile was written (an entry inserted or
	// updated, or a .conf converted).
	ConfChanged bool
	// Converted is the single-plugin file that was converted (and removed),
	// if any.
	Converted string
	// BinaryChanged reports that the binary was (re)written.
	BinaryChanged bool
}

// ErrNoPrimaryConfig is returned (wrapped) while the conf directory holds no
// network configuration (the primary CNI has not installed its own yet).
var ErrNoPrimaryConfig = errors.New("no primary CNI network configuration yet")

// Installer installs the plugin; see the package documentation.
type Installer struct {
	cfg   Config
	log   *slog.Logger
	entry json.RawMessage

	mu      sync.Mutex
	lastErr error
	last    Result
	ok      bool
}

// New checks cfg and returns an Installer.
func New(cfg Config) (*Installer, error) {
	if cfg.PluginBinary == "" || cfg.BinDir == "" || cfg.ConfDir == "" {
		return nil, errors.New("install: plugin binary, bin dir and conf dir are required")
	}
	if cfg.PrimaryConfName != "" && (filepath.Base(cfg.PrimaryConfName) != cfg.PrimaryConfName || !isConfName(cfg.PrimaryConfName)) {
		return nil, fmt.Errorf("install: primary configuration name %q must be a .conf, .conflist or .json file name", cfg.PrimaryConfName)
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = 30 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	entry, err := encodeEntry(cfg.Entry)
	if err != nil {
		return nil, err
	}
	return &Installer{cfg: cfg, log: log.With("component", "cni-install"), entry: entry}, nil
}

func encodeEntry(e Entry) (json.RawMessage, error) {
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("install: encode entry: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("install: encode entry: %w", err)
	}
	m["type"] = PluginType
	b, err = json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("install: encode entry: %w", err)
	}
	return b, nil
}

func isConfName(name string) bool {
	switch filepath.Ext(name) {
	case ".conf", ".conflist", ".json":
		return true
	}
	return false
}

// Status is the outcome of the last Install pass: ok is true when the plugin
// is installed and chained.
func (in *Installer) Status() (ok bool, last Result, err error) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.ok, in.last, in.lastErr
}

// Install makes one pass: binary first (so that the runtime never runs a
// configuration naming a missing binary), then the configuration. It is
// idempotent: with everything in place it writes nothing.
func (in *Installer) Install() (Result, error) {
	res, err := in.install()
	in.mu.Lock()
	in.ok, in.last, in.lastErr = err == nil, res, err
	in.mu.Unlock()
	return res, err
}

func (in *Installer) install() (Result, error) {
	var res Result
	changed, err := in.installBinary()
	if err != nil {
		return res, err
	}
	res.BinaryChanged = changed
	primary, err := in.primary()
	if err != nil {
		return res, err
	}
	res.ConfFile = primary
	data, mode, err := readFile(primary)
	if err != nil {
		return res, err
	}
	list, converted, err := toList(data, filepath.Ext(primary) != ".conflist")
	if err != nil {
		return res, fmt.Errorf("install: %s: %w (left untouched)", primary, err)
	}
	out, changedConf, err := withEntry(list, in.entry)
	if err != nil {
		return res, fmt.Errorf("install: %s: %w (left untouched)", primary, err)
	}
	if converted {
		target := strings.TrimSuffix(primary, filepath.Ext(primary)) + ".conflist"
		if err := writeAtomic(target, out, mode); err != nil {
			return res, err
		}
		if err := os.Remove(primary); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("install: remove converted %s: %w", primary, err)
		}
		res.Converted, res.ConfFile, res.ConfChanged = primary, target, true
		in.log.Info("converted the primary network configuration to a list and chained the plugin", "from", primary, "to", target)
		return res, nil
	}
	if changedConf {
		if err := writeAtomic(primary, out, mode); err != nil {
			return res, err
		}
		res.ConfChanged = true
		in.log.Info("chained the plugin in the primary network configuration", "file", primary)
	}
	return res, nil
}

// primary returns the path of the primary configuration file.
func (in *Installer) primary() (string, error) {
	if in.cfg.PrimaryConfName != "" {
		p := filepath.Join(in.cfg.ConfDir, in.cfg.PrimaryConfName)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		// The named .conf may have been converted by an earlier pass.
		alt := strings.TrimSuffix(p, filepath.Ext(p)) + ".conflist"
		if _, err := os.Stat(alt); err == nil {
			return alt, nil
		}
		return "", fmt.Errorf("install: %s: %w", p, ErrNoPrimaryConfig)
	}
	names, err := confFiles(in.cfg.ConfDir)
	if err != nil {
		return "", err
	}
	if len(names) == 0 {
		return "", fmt.Errorf("install: %s: %w", in.cfg.ConfDir, ErrNoPrimaryConfig)
	}
	return filepath.Join(in.cfg.ConfDir, names[0]), nil
}

// confFiles lists the configuration files of dir in the runtime's order.
func confFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		return nil, fmt.Errorf("install: read conf dir: %w", err)
	}
	var names []string
	for _, e := range ents {
		if e.Type().IsRegular() || e.Type()&os.ModeSymlink != 0 {
			if isConfName(e.Name()) {
				names = append(names, e.Name())
			}
		}
	}
	sort.Strings(names)
	return names, nil
}

func readFile(path string) ([]byte, os.FileMode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, fmt.Errorf("install: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("install: %w", err)
	}
	const maxConf = 1 << 20
	data, err := io.ReadAll(io.LimitReader(f, maxConf+1))
	if err != nil {
		return nil, 0, fmt.Errorf("install: read %s: %w", path, err)
	}
	if len(data) > maxConf {
		return nil, 0, fmt.Errorf("install: %s is larger than %d bytes", path, maxConf)
	}
	return data, fi.Mode().Perm(), nil
}

// confList is a network configuration list with every field kept verbatim.
type confList struct {
	top     map[string]json.RawMessage
	plugins []json.RawMessage
}

func pluginType(raw json.RawMessage) (string, error) {
	var p struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return "", fmt.Errorf("plugin entry is not an object: %w", err)
	}
	if p.Type == nil || *p.Type == "" {
		return "", errors.New("plugin entry has no type")
	}
	return *p.Type, nil
}

// toList parses data as a list, or (single) as one plugin's configuration
// turned into a list; converted reports the latter.
func toList(data []byte, single bool) (*confList, bool, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(data, &top); err != nil {
		return nil, false, fmt.Errorf("not a JSON network configuration: %w", err)
	}
	if top == nil {
		return nil, false, errors.New("not a JSON network configuration: null")
	}
	if rawPlugins, ok := top["plugins"]; ok {
		var plugins []json.RawMessage
		if err := json.Unmarshal(rawPlugins, &plugins); err != nil {
			return nil, false, fmt.Errorf("plugins is not a list: %w", err)
		}
		for i, p := range plugins {
			if _, err := pluginType(p); err != nil {
				return nil, false, fmt.Errorf("plugins[%d]: %w", i, err)
			}
		}
		return &confList{top: top, plugins: plugins}, false, nil
	}
	if !single {
		return nil, false, errors.New("network configuration list has no plugins")
	}
	if _, err := pluginType(data); err != nil {
		return nil, false, err
	}
	// A single plugin: the list takes the network's name and version; the
	// plugin keeps every field (a cniVersion inside is overridden by the
	// list's, as the runtime does).
	l := &confList{top: map[string]json.RawMessage{}, plugins: []json.RawMessage{json.RawMessage(bytes.TrimSpace(data))}}
	for _, k := range []string{"cniVersion", "name"} {
		if v, ok := top[k]; ok {
			l.top[k] = v
		}
	}
	return l, true, nil
}

// withEntry returns the list with our entry as the last plugin (and nowhere
// else), and whether that differs from the list as it was.
func withEntry(l *confList, entry json.RawMessage) ([]byte, bool, error) {
	var kept []json.RawMessage
	var ours []json.RawMessage
	for _, p := range l.plugins {
		t, err := pluginType(p)
		if err != nil {
			return nil, false, err
		}
		if t == PluginType {
			ours = append(ours, p)
			continue
		}
		kept = append(kept, p)
	}
	if len(kept) == 0 {
		return nil, false, errors.New("no primary plugin in the configuration (only ours)")
	}
	unchanged := len(ours) == 1 && sameJSON(l.plugins[len(l.plugins)-1], entry) && slices.IndexFunc(l.plugins[:len(l.plugins)-1], func(p json.RawMessage) bool {
		t, _ := pluginType(p)
		return t == PluginType
	}) < 0
	out, err := l.encode(append(kept, entry))
	return out, !unchanged, err
}

func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	return reflect.DeepEqual(x, y)
}

func (l *confList) encode(plugins []json.RawMessage) ([]byte, error) {
	top := make(map[string]json.RawMessage, len(l.top)+1)
	for k, v := range l.top {
		top[k] = v
	}
	p, err := json.Marshal(plugins)
	if err != nil {
		return nil, fmt.Errorf("encode plugins: %w", err)
	}
	top["plugins"] = p
	out, err := json.MarshalIndent(top, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode configuration: %w", err)
	}
	return append(out, '\n'), nil
}

// writeAtomic replaces path with data: a hidden temporary file (whose name
// has no configuration extension, so the runtime ignores it) in the same
// directory, synced, then renamed.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".ambit-tmp-*")
	if err != nil {
		return fmt.Errorf("install: write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr, os.Chmod(tmp, mode)); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("install: write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("install: write %s: %w", path, err)
	}
	return nil
}

func fileHash(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// installBinary copies the plugin binary into BinDir unless an identical
// one is there.
func (in *Installer) installBinary() (bool, error) {
	src := in.cfg.PluginBinary
	want, err := fileHash(src)
	if err != nil {
		return false, fmt.Errorf("install: plugin binary: %w", err)
	}
	dst := filepath.Join(in.cfg.BinDir, PluginType)
	if have, err := fileHash(dst); err == nil && bytes.Equal(have, want) {
		return false, nil
	}
	data, err := os.ReadFile(src)
	if err != nil {
		return false, fmt.Errorf("install: plugin binary: %w", err)
	}
	if err := os.MkdirAll(in.cfg.BinDir, 0o755); err != nil {
		return false, fmt.Errorf("install: bin dir: %w", err)
	}
	if err := writeAtomic(dst, data, 0o755); err != nil {
		return false, err
	}
	in.log.Info("installed the plugin binary", "path", dst)
	return true, nil
}

// Uninstall removes our entry from every configuration list in ConfDir (a
// converted .conf stays a .conflist) and the binary. Files without our entry,
// and garbage files, are left untouched.
func (in *Installer) Uninstall() error {
	names, err := confFiles(in.cfg.ConfDir)
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		path := filepath.Join(in.cfg.ConfDir, name)
		data, mode, err := readFile(path)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		l, _, err := toList(data, false)
		if err != nil {
			continue // not a list (or garbage): not ours to touch
		}
		var kept []json.RawMessage
		for _, p := range l.plugins {
			if t, _ := pluginType(p); t != PluginType {
				kept = append(kept, p)
			}
		}
		if len(kept) == len(l.plugins) {
			continue
		}
		out, err := l.encode(kept)
		if err != nil {
			errs = append(errs, fmt.Errorf("install: %s: %w", path, err))
			continue
		}
		if err := writeAtomic(path, out, mode); err != nil {
			errs = append(errs, err)
			continue
		}
		in.log.Info("removed the plugin from the network configuration", "file", path)
	}
	bin := filepath.Join(in.cfg.BinDir, PluginType)
	if err := os.Remove(bin); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("install: remove binary: %w", err))
	} else if err == nil {
		in.log.Info("removed the plugin binary", "path", bin)
	}
	return errors.Join(errs...)
}

// Run installs, then keeps the installation in place until ctx is cancelled:
// it re-runs Install after any change in ConfDir (debounced) and every
// ResyncInterval. Failures (no primary configuration yet, a garbage file) are
// logged and retried; Status reports them. On return, with CleanupOnExit, it
// uninstalls.
func (in *Installer) Run(ctx context.Context) (err error) {
	if err := os.MkdirAll(in.cfg.ConfDir, 0o755); err != nil {
		return fmt.Errorf("install: conf dir: %w", err)
	}
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("install: watch: %w", err)
	}
	defer w.Close()
	if err := w.Add(in.cfg.ConfDir); err != nil {
		return fmt.Errorf("install: watch %s: %w", in.cfg.ConfDir, err)
	}
	if in.cfg.CleanupOnExit {
		defer func() {
			if uerr := in.Uninstall(); uerr != nil {
				err = errors.Join(err, fmt.Errorf("install: cleanup: %w", uerr))
			}
		}()
	}
	pass := func() {
		res, err := in.Install()
		switch {
		case errors.Is(err, ErrNoPrimaryConfig):
			in.log.Info("waiting for the primary CNI's network configuration", "dir", in.cfg.ConfDir)
		case err != nil:
			in.log.Error("install failed; will retry on the next change", "err", err)
		case res.ConfChanged || res.BinaryChanged:
			in.log.Info("plugin installed", "conf", res.ConfFile, "conf_changed", res.ConfChanged, "binary_changed", res.BinaryChanged)
		}
	}
	pass()
	ticker := time.NewTicker(in.cfg.ResyncInterval)
	defer ticker.Stop()
	const debounce = 100 * time.Millisecond
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("install: watcher closed")
			}
			if strings.Contains(filepath.Base(ev.Name), ".ambit-tmp-") {
				continue // our own temporary files
			}
			timer.Reset(debounce)
		case werr, ok := <-w.Errors:
			if !ok {
				return errors.New("install: watcher closed")
			}
			in.log.Warn("watch error; re-checking", "err", werr)
			timer.Reset(debounce)
		case <-timer.C:
			pass()
		case <-ticker.C:
			pass()
		}
	}
}
