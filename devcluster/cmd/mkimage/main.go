// Command mkimage builds a single-layer OCI image from files on this machine
// and writes it as a docker-archive tarball that `ctr images import` loads.
//
//	mkimage -o out.tar -t name:tag [-t name2:tag] -f /host/path=/image/path[:mode] \
//	        [-entrypoint /bin/x] [-cmd arg] [-env K=V] [-workdir /]
//
// A host directory given with -f is copied recursively. Parent directories
// are created as needed; file modes are kept unless a mode is given.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// entry is one file, directory or symlink of the layer.
type entry struct {
	hdr  *tar.Header
	host string // file contents come from here (regular files only)
}

func main() {
	var tags, files, cmd, env, symlinks multi
	out := flag.String("o", "", "output tarball")
	entrypoint := flag.String("entrypoint", "", "entrypoint, space separated")
	workdir := flag.String("workdir", "/", "working directory")
	flag.Var(&tags, "t", "image reference (repeatable)")
	flag.Var(&files, "f", "host=image[:mode] (repeatable)")
	flag.Var(&symlinks, "l", "linkname=target: a symlink in the image (repeatable)")
	flag.Var(&cmd, "cmd", "cmd argument (repeatable)")
	flag.Var(&env, "env", "K=V (repeatable)")
	flag.Parse()
	if *out == "" || len(tags) == 0 {
		log.Fatal("mkimage: -o and at least one -t are required")
	}

	entries := map[string]*entry{}
	epoch := time.Unix(0, 0)
	addDir := func(p string) {
		for d := p; d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = &entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755, ModTime: epoch}}
			}
		}
	}
	for _, f := range files {
		host, dst, ok := strings.Cut(f, "=")
		if !ok {
			log.Fatalf("mkimage: -f %q: want host=image[:mode]", f)
		}
		mode := int64(-1)
		if i := strings.LastIndex(dst, ":"); i >= 0 {
			m, err := strconv.ParseInt(dst[i+1:], 8, 32)
			if err != nil {
				log.Fatalf("mkimage: -f %q: bad mode: %v", f, err)
			}
			mode, dst = m, dst[:i]
		}
		err := filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(host, p)
			target := path.Clean(path.Join(dst, filepath.ToSlash(rel)))
			addDir(path.Dir(target))
			info, err := os.Lstat(p)
			if err != nil {
				return err
			}
			h := &tar.Header{Name: strings.TrimPrefix(target, "/"), Mode: int64(info.Mode().Perm()), ModTime: epoch}
			switch {
			case info.IsDir():
				h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
				entries[target] = &entry{hdr: h}
				return nil
			case info.Mode()&fs.ModeSymlink != 0:
				l, err := os.Readlink(p)
				if err != nil {
					return err
				}
				h.Typeflag, h.Linkname = tar.TypeSymlink, l
			default:
				h.Typeflag, h.Size = tar.TypeReg, info.Size()
				if mode >= 0 {
					h.Mode = mode
				}
			}
			entries[target] = &entry{hdr: h, host: p}
			return nil
		})
		if err != nil {
			log.Fatalf("mkimage: %v", err)
		}
	}
	for _, s := range symlinks {
		l, target, ok := strings.Cut(s, "=")
		if !ok {
			log.Fatalf("mkimage: -l %q: want linkname=target", s)
		}
		addDir(path.Dir(l))
		entries[l] = &entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: strings.TrimPrefix(l, "/"), Linkname: target, Mode: 0o777, ModTime: epoch}}
	}
	addDir("/tmp/x")
	entries["/tmp"].hdr.Mode = 0o1777

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		e := entries[k]
		if err := tw.WriteHeader(e.hdr); err != nil {
			log.Fatal(err)
		}
		if e.hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(e.host)
			if err != nil {
				log.Fatal(err)
			}
			if _, err := io.Copy(tw, f); err != nil {
				log.Fatal(err)
			}
			f.Close()
		}
	}
	if err := tw.Close(); err != nil {
		log.Fatal(err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
	if err != nil {
		log.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		log.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		log.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: epoch}
	if *entrypoint != "" {
		cf.Config.Entrypoint = strings.Fields(*entrypoint)
	}
	cf.Config.Cmd = cmd
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}, env...)
	cf.Config.WorkingDir = *workdir
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		log.Fatal(err)
	}
	refs := map[name.Reference]v1.Image{}
	for _, t := range tags {
		ref, err := name.NewTag(t)
		if err != nil {
			log.Fatalf("mkimage: tag %q: %v", t, err)
		}
		refs[ref] = img
	}
	if err := tarball.MultiRefWriteToFile(*out, refs); err != nil {
		log.Fatal(err)
	}
	d, _ := img.Digest()
	fmt.Printf("%s %s\n", d, strings.Join(tags, " "))
}
