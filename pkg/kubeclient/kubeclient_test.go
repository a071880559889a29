package kubeclient

import (
	"os"
	"path/filepath"
	"testing"
)

func TestConfigFromKubeconfig(t *testing.T) {
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, []byte(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Config(path, "ambit-test")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "https://127.0.0.1:6443" || cfg.BearerToken != "t" || cfg.UserAgent != "ambit-test" {
		t.Errorf("config: host %q token %q agent %q", cfg.Host, cfg.BearerToken, cfg.UserAgent)
	}
	if _, err := Config(filepath.Join(t.TempDir(), "missing"), "x"); err == nil {
		t.Error("a missing kubeconfig gave no error")
	}
}

func TestInClusterNeedsServiceAccount(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := Config("", "x"); err == nil {
		t.Error("in-cluster config outside a pod gave no error")
	}
}
