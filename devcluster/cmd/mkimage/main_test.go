package main

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// TestImage builds mkimage, writes an image with two tags, a file with a
// forced mode, a directory and a symlink, and reads it back as containerd's
// import would see it.
func TestImage(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "mkimage")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	src := filepath.Join(dir, "src")
	must(t, os.MkdirAll(filepath.Join(src, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "sub", "a.txt"), []byte("hello"), 0o600))
	must(t, os.WriteFile(filepath.Join(dir, "tool"), []byte("#!/bin/sh\n"), 0o644))
	out := filepath.Join(dir, "img.tar")
	cmd := exec.Command(bin, "-o", out, "-t", "registry.k8s.io/x/y:v1", "-t", "ambit/y:dev",
		"-f", filepath.Join(dir, "tool")+"=/usr/local/bin/tool:755", "-f", src+"=/data",
		"-l", "/bin/sh=/usr/local/bin/tool", "-entrypoint", "/usr/local/bin/tool", "-env", "A=b")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("mkimage: %v\n%s", err, b)
	}

	for _, ref := range []string{"registry.k8s.io/x/y:v1", "ambit/y:dev"} {
		tag, _ := name.NewTag(ref)
		img, err := tarball.ImageFromPath(out, &tag)
		if err != nil {
			t.Fatalf("%s: %v", ref, err)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != "amd64" || len(cf.Config.Entrypoint) != 1 || cf.Config.Entrypoint[0] != "/usr/local/bin/tool" {
			t.Errorf("%s: config %+v", ref, cf)
		}
		if len(cf.Config.Env) != 2 || cf.Config.Env[1] != "A=b" {
			t.Errorf("%s: env %v", ref, cf.Config.Env)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: layers %d, %v", ref, len(layers), err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]*tar.Header{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got[h.Name] = h
		}
		rc.Close()
		check := func(name string, typ byte, mode int64) {
			t.Helper()
			h := got[name]
			if h == nil {
				t.Errorf("%s: no %s in layer (have %v)", ref, name, keys(got))
				return
			}
			if h.Typeflag != typ || (mode >= 0 && h.Mode != mode) {
				t.Errorf("%s: %s type %c mode %o, want %c %o", ref, name, h.Typeflag, h.Mode, typ, mode)
			}
		}
		check("usr/local/bin/tool", tar.TypeReg, 0o755)
		check("data/sub/a.txt", tar.TypeReg, 0o600)
		check("data/sub/", tar.TypeDir, -1)
		check("usr/local/bin/", tar.TypeDir, 0o755)
		check("bin/sh", tar.TypeSymlink, -1)
		check("tmp/", tar.TypeDir, 0o1777)
	}
}

func keys(m map[string]*tar.Header) []string {
	var k []string
	for n := range m {
		k = append(k, n)
	}
	return k
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
