package install

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Configurations as primary CNIs write them.
const bridgePortmapList = `{
  "cniVersion": "1.0.0",
  "name": "cbr0",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "mtu": 1450,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "10.244.1.0/24"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
`

const singleConf = `{
  "cniVersion": "0.3.1",
  "name": "mynet",
  "type": "bridge",
  "bridge": "cni0",
  "isGateway": true,
  "ipam": {"type": "host-local", "subnet": "10.22.0.0/16", "routes": [{"dst": "0.0.0.0/0"}]}
}
`

type env struct {
	t       *testing.T
	bin     string
	binDir  string
	confDir string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	d := t.TempDir()
	e := &env{t: t, bin: filepath.Join(d, "src", "ambit-cni"), binDir: filepath.Join(d, "opt", "cni", "bin"), confDir: filepath.Join(d, "etc", "cni", "net.d")}
	for _, dir := range []string{filepath.Dir(e.bin), e.binDir, e.confDir} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(e.bin, []byte("#!/bin/sh\necho plugin v1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) installer(mod ...func(*Config)) *Installer {
	e.t.Helper()
	cfg := Config{
		PluginBinary: e.bin, BinDir: e.binDir, ConfDir: e.confDir,
		Entry: Entry{SocketPath: "/var/run/ambit/ztunnel.sock", ExcludeNamespaces: []string{"kube-system", "ambit-system"}},
	}
	for _, m := range mod {
		m(&cfg)
	}
	in, err := New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return in
}

func (e *env) write(name, content string) string {
	e.t.Helper()
	p := filepath.Join(e.confDir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func readList(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, data)
	}
	return m
}

func pluginTypes(m map[string]any) []string {
	var out []string
	for _, p := range m["plugins"].([]any) {
		out = append(out, p.(map[string]any)["type"].(string))
	}
	return out
}

func TestInstallIntoConflist(t *testing.T) {
	e := newEnv(t)
	p := e.write("10-bridge.conflist", bridgePortmapList)
	in := e.installer()
	res, err := in.Install()
	if err != nil {
		t.Fatal(err)
	}
	if res.ConfFile != p || !res.ConfChanged || !res.BinaryChanged || res.Converted != "" {
		t.Fatalf("result %+v", res)
	}
	m := readList(t, p)
	if got := strings.Join(pluginTypes(m), ","); got != "bridge,portmap,ambit-cni" {
		t.Fatalf("plugins %s", got)
	}
	if m["cniVersion"] != "1.0.0" || m["name"] != "cbr0" {
		t.Fatalf("top-level fields changed: %v", m)
	}
	// The primary plugins' fields are kept exactly, numbers included.
	bridge := m["plugins"].([]any)[0].(map[string]any)
	if bridge["mtu"].(float64) != 1450 || bridge["ipam"].(map[string]any)["type"] != "host-local" {
		t.Fatalf("bridge entry changed: %v", bridge)
	}
	ours := m["plugins"].([]any)[2].(map[string]any)
	if ours["socketPath"] != "/var/run/ambit/ztunnel.sock" || len(ours["excludeNamespaces"].([]any)) != 2 {
		t.Fatalf("our entry: %v", ours)
	}
	bin := filepath.Join(e.binDir, "ambit-cni")
	fi, err := os.Stat(bin)
	if err != nil || fi.Mode().Perm() != 0o755 {
		t.Fatalf("binary: %v %v", fi, err)
	}

	// Idempotent: a second pass writes nothing.
	before, _ := os.Stat(p)
	res, err = in.Install()
	if err != nil || res.ConfChanged || res.BinaryChanged {
		t.Fatalf("second pass: %+v %v", res, err)
	}
	after, _ := os.Stat(p)
	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Fatal("second pass rewrote the file")
	}
	assertNoTemp(t, e.confDir, e.binDir)
}

func TestInstallConvertsSingleConf(t *testing.T) {
	e := newEnv(t)
	p := e.write("10-mynet.conf", singleConf)
	res, err := e.installer().Install()
	if err != nil {
		t.Fatal(err)
	}
	want := filepath.Join(e.confDir, "10-mynet.conflist")
	if res.ConfFile != want || res.Converted != p || !res.ConfChanged {
		t.Fatalf("result %+v", res)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("original .conf still there: %v", err)
	}
	m := readList(t, want)
	if m["cniVersion"] != "0.3.1" || m["name"] != "mynet" {
		t.Fatalf("list header: %v", m)
	}
	if got := strings.Join(pluginTypes(m), ","); got != "bridge,ambit-cni" {
		t.Fatalf("plugins %s", got)
	}
	first := m["plugins"].([]any)[0].(map[string]any)
	if first["bridge"] != "cni0" || first["ipam"].(map[string]any)["subnet"] != "10.22.0.0/16" {
		t.Fatalf("original plugin changed: %v", first)
	}
	// Idempotent on the converted file.
	res, err = e.installer().Install()
	if err != nil || res.ConfChanged || res.ConfFile != want {
		t.Fatalf("second pass: %+v %v", res, err)
	}
}

func TestInstallAlreadyInstalledMovesAndUpdatesEntry(t *testing.T) {
	e := newEnv(t)
	// An older entry in the middle (older installer, other settings) and a
	// duplicate at the end.
	old := `{"cniVersion":"1.0.0","name":"cbr0","plugins":[
	  {"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.244.1.0/24"}},
	  {"type":"ambit-cni","socketPath":"/old.sock"},
	  {"type":"portmap","capabilities":{"portMappings":true}},
	  {"type":"ambit-cni","socketPath":"/old.sock"}]}`
	p := e.write("10-bridge.conflist", old)
	res, err := e.installer().Install()
	if err != nil || !res.ConfChanged {
		t.Fatalf("%+v %v", res, err)
	}
	m := readList(t, p)
	if got := strings.Join(pluginTypes(m), ","); got != "bridge,portmap,ambit-cni" {
		t.Fatalf("plugins %s", got)
	}
	if got := m["plugins"].([]any)[2].(map[string]any)["socketPath"]; got != "/var/run/ambit/ztunnel.sock" {
		t.Fatalf("entry not updated: %v", got)
	}
}

func TestInstallGarbageLeftUntouched(t *testing.T) {
	for name, content := range map[string]string{
		"10-garbage.conflist":   "this is not json {",
		"10-noplugins.conflist": `{"cniVersion":"1.0.0","name":"x"}`,
		"10-notype.conf":        `{"cniVersion":"1.0.0","name":"x"}`,
		"10-badplugin.conflist": `{"cniVersion":"1.0.0","name":"x","plugins":[{"bridge":"cni0"}]}`,
		"10-array.conflist":     `[1,2,3]`,
		"10-onlyours.conflist":  `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ambit-cni"}]}`,
	} {
		t.Run(name, func(t *testing.T) {
			e := newEnv(t)
			p := e.write(name, content)
			_, err := e.installer().Install()
			if err == nil {
				t.Fatal("want an error")
			}
			if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "left untouched") {
				t.Fatalf("error does not name the file clearly: %v", err)
			}
			data, _ := os.ReadFile(p)
			if string(data) != content {
				t.Fatalf("file changed: %q", data)
			}
			assertNoTemp(t, e.confDir)
		})
	}
}

func TestInstallNoPrimaryYet(t *testing.T) {
	e := newEnv(t)
	e.write("README", "not a config")
	_, err := e.installer().Install()
	if !errors.Is(err, ErrNoPrimaryConfig) {
		t.Fatalf("want ErrNoPrimaryConfig, got %v", err)
	}
}

func TestInstallPicksFirstInLexicalOrder(t *testing.T) {
	e := newEnv(t)
	first := e.write("05-first.conflist", bridgePortmapList)
	second := e.write("10-second.conflist", bridgePortmapList)
	res, err := e.installer().Install()
	if err != nil || res.ConfFile != first {
		t.Fatalf("%+v %v", res, err)
	}
	if got := strings.Join(pluginTypes(readList(t, second)), ","); got != "bridge,portmap" {
		t.Fatalf("second file touched: %s", got)
	}
	// An explicit name wins.
	res, err = e.installer(func(c *Config) { c.PrimaryConfName = "10-second.conflist" }).Install()
	if err != nil || res.ConfFile != second {
		t.Fatalf("%+v %v", res, err)
	}
}

func TestInstallKeepsFileMode(t *testing.T) {
	e := newEnv(t)
	p := e.write("10-bridge.conflist", bridgePortmapList)
	if err := os.Chmod(p, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := e.installer().Install(); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
}

func TestBinaryReplacedWhenDifferent(t *testing.T) {
	e := newEnv(t)
	e.write("10-bridge.conflist", bridgePortmapList)
	in := e.installer()
	if _, err := in.Install(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.bin, []byte("#!/bin/sh\necho plugin v2\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	res, err := in.Install()
	if err != nil || !res.BinaryChanged {
		t.Fatalf("%+v %v", res, err)
	}
	data, _ := os.ReadFile(filepath.Join(e.binDir, "ambit-cni"))
	if !strings.Contains(string(data), "v2") {
		t.Fatal("binary not updated")
	}
}

func TestUninstall(t *testing.T) {
	e := newEnv(t)
	p := e.write("10-bridge.conflist", bridgePortmapList)
	garbage := e.write("20-garbage.conflist", "garbage")
	in := e.installer()
	if _, err := in.Install(); err != nil {
		t.Fatal(err)
	}
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(pluginTypes(readList(t, p)), ","); got != "bridge,portmap" {
		t.Fatalf("plugins after uninstall: %s", got)
	}
	if _, err := os.Stat(filepath.Join(e.binDir, "ambit-cni")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("binary still there: %v", err)
	}
	if data, _ := os.ReadFile(garbage); string(data) != "garbage" {
		t.Fatal("garbage file touched")
	}
	// Twice is fine.
	if err := in.Uninstall(); err != nil {
		t.Fatal(err)
	}
}

// TestRunReinsertsAfterRewrite: the primary CNI rewrites its configuration
// (dropping our entry, or replacing the list with a single .conf); Run puts
// the entry back, and on exit removes it.
func TestRunReinsertsAfterRewrite(t *testing.T) {
	e := newEnv(t)
	p := e.write("10-bridge.conflist", bridgePortmapList)
	in := e.installer(func(c *Config) { c.CleanupOnExit = true; c.ResyncInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()

	waitFor(t, "entry inserted", func() bool {
		return strings.Join(pluginTypes(readListQuiet(p)), ",") == "bridge,portmap,ambit-cni"
	})
	// The primary CNI rewrites its file (atomically, as most do).
	tmp := filepath.Join(e.confDir, ".tmp-primary")
	if err := os.WriteFile(tmp, []byte(bridgePortmapList), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "entry re-inserted after rewrite", func() bool {
		return strings.Join(pluginTypes(readListQuiet(p)), ",") == "bridge,portmap,ambit-cni"
	})
	// In place (truncate + write), too.
	if err := os.WriteFile(p, []byte(bridgePortmapList), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "entry re-inserted after in-place write", func() bool {
		return strings.Join(pluginTypes(readListQuiet(p)), ",") == "bridge,portmap,ambit-cni"
	})
	// Another CNI takes over with a single .conf sorting first.
	conf := e.write("05-other.conf", singleConf)
	other := filepath.Join(e.confDir, "05-other.conflist")
	waitFor(t, "new primary converted and chained", func() bool {
		_, err := os.Stat(conf)
		return errors.Is(err, os.ErrNotExist) && strings.Join(pluginTypes(readListQuiet(other)), ",") == "bridge,ambit-cni"
	})
	if ok, last, err := in.Status(); !ok || err != nil || last.ConfFile != other {
		t.Fatalf("status %v %+v %v", ok, last, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{p, other} {
		for _, typ := range pluginTypes(readList(t, f)) {
			if typ == PluginType {
				t.Fatalf("%s still has our entry after exit", f)
			}
		}
	}
	if _, err := os.Stat(filepath.Join(e.binDir, "ambit-cni")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("binary still there after exit: %v", err)
	}
	assertNoTemp(t, e.confDir, e.binDir)
}

// TestRunWaitsForPrimary: started before the primary CNI, Run installs as
// soon as its configuration appears.
func TestRunWaitsForPrimary(t *testing.T) {
	e := newEnv(t)
	in := e.installer(func(c *Config) { c.ResyncInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- in.Run(ctx) }()
	waitFor(t, "binary installed", func() bool {
		_, err := os.Stat(filepath.Join(e.binDir, "ambit-cni"))
		return err == nil
	})
	if ok, _, err := in.Status(); ok || !errors.Is(err, ErrNoPrimaryConfig) {
		t.Fatalf("status before primary: %v %v", ok, err)
	}
	p := e.write("10-bridge.conflist", bridgePortmapList)
	waitFor(t, "entry inserted", func() bool {
		return strings.Join(pluginTypes(readListQuiet(p)), ",") == "bridge,portmap,ambit-cni"
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// No cleanup configured: the entry stays.
	if got := strings.Join(pluginTypes(readList(t, p)), ","); got != "bridge,portmap,ambit-cni" {
		t.Fatalf("entry removed without CleanupOnExit: %s", got)
	}
}

func readListQuiet(path string) map[string]any {
	data, err := os.ReadFile(path)
	if err != nil {
		return map[string]any{"plugins": []any{}}
	}
	var m map[string]any
	if json.Unmarshal(data, &m) != nil {
		return map[string]any{"plugins": []any{}}
	}
	if _, ok := m["plugins"].([]any); !ok {
		return map[string]any{"plugins": []any{}}
	}
	return m
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func assertNoTemp(t *testing.T, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if strings.Contains(e.Name(), "ambit-tmp") {
				t.Fatalf("temporary file left: %s", filepath.Join(d, e.Name()))
			}
		}
	}
}
