package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersionCommand(t *testing.T) {
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"version"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("version: %v", err)
	}
	if got := strings.TrimSpace(out.String()); got != version {
		t.Fatalf("version printed %q, want %q", got, version)
	}
}

func TestUnknownCommandFails(t *testing.T) {
	cmd := newRootCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"no-such-command"})
	if err := cmd.Execute(); err == nil {
		t.Fatal("unknown command succeeded")
	}
}

func TestDevScriptFoundFromSubdirectory(t *testing.T) {
	repo := t.TempDir()
	scripts := filepath.Join(repo, "devcluster", "scripts")
	if err := os.MkdirAll(scripts, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scripts, "up.sh"), []byte("#!/bin/sh\necho brought-up\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(repo, "a", "b")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(sub)
	cmd := newRootCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetArgs([]string{"dev", "up"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("dev up: %v", err)
	}
	if strings.TrimSpace(out.String()) != "brought-up" {
		t.Fatalf("dev up ran something else: %q", out.String())
	}
	t.Chdir(t.TempDir())
	cmd = newRootCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetErr(&bytes.Buffer{})
	cmd.SetArgs([]string{"dev", "down"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "no devcluster/") {
		t.Fatalf("dev down outside a checkout: %v", err)
	}
}
