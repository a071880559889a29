//go:build linux

package podns_test

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

func inode(t *testing.T, fd int) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestDoEntersAndRestores(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewT(t)
	host, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	want := inode(t, ns.Fd())
	for range 50 {
		err := ns.Do(func() error {
			cur, err := netns.Get()
			if err != nil {
				return err
			}
			defer cur.Close()
			if got := inode(t, int(cur)); got != want {
				t.Errorf("inside Do: netns inode %d, want %d", got, want)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	// Every thread the runtime hands out afterwards is back in the host
	// namespace: check from many locked goroutines.
	done := make(chan uint64)
	for range 20 {
		go func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			cur, err := netns.Get()
			if err != nil {
				done <- 0
				return
			}
			defer cur.Close()
			var st unix.Stat_t
			_ = unix.Fstat(int(cur), &st)
			done <- st.Ino
		}()
	}
	hostIno := inode(t, int(host))
	for range 20 {
		if got := <-done; got != hostIno {
			t.Fatalf("a thread is left in netns inode %d, host is %d", got, hostIno)
		}
	}
}

func TestDoReturnsError(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewT(t)
	sentinel := errors.New("boom")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Fatalf("got %v", err)
	}
	var nilNS *podns.NS
	if err := nilNS.Do(func() error { return nil }); err == nil {
		t.Fatal("Do on nil NS succeeded")
	}
}

func TestOpenRejectsNonNamespace(t *testing.T) {
	if _, err := podns.Open("/etc/hostname"); err == nil {
		t.Fatal("opened a regular file as a network namespace")
	}
	if _, err := podns.Open("/nonexistent/ns/net"); err == nil {
		t.Fatal("opened a missing path")
	}
	if _, err := podns.FromFile(nil); err == nil {
		t.Fatal("FromFile(nil) succeeded")
	}
}

func TestFromFileDoesNotOwn(t *testing.T) {
	netnstest.RequireRoot(t)
	f, err := os.Open("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ns, err := podns.FromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(); err != nil {
		t.Fatalf("caller's file was closed: %v", err)
	}
	host, err := netnstest.IsHostNS(ns)
	if err != nil || !host {
		t.Fatalf("IsHostNS on the host namespace: %v, %v", host, err)
	}
}
