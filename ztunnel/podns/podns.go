//go:build linux

// Package podns holds open handles on network namespaces (a pod's, typically)
// and runs code inside them on a locked OS thread.
//
// A socket belongs to the network namespace of the thread that created it, for
// its whole life, whichever thread uses it afterwards. So the ztunnel enters a
// pod's namespace only to create a socket (listen or dial) and leaves at once;
// the socket keeps serving the pod's namespace from any goroutine.
package podns

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is an open handle on a network namespace. It is safe for concurrent use;
// Close it when done (it holds a file descriptor).
type NS struct {
	f     *os.File
	fd    int
	owned bool
	name  string
}

// Open opens the network namespace at path, for example /proc/<pid>/ns/net or
// /var/run/netns/<name>, and checks that it is one.
func Open(path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	ns, err := fromFile(f, true)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return ns, nil
}

// FromFile wraps an already open network namespace file. The caller keeps
// ownership of f: Close on the returned NS does not close it, and f must stay
// open while the NS is used.
func FromFile(f *os.File) (*NS, error) {
	if f == nil {
		return nil, errors.New("network namespace file is nil")
	}
	return fromFile(f, false)
}

// Adopt is FromFile that takes ownership of f: Close closes it.
func Adopt(f *os.File) (*NS, error) {
	if f == nil {
		return nil, errors.New("network namespace file is nil")
	}
	return fromFile(f, true)
}

func fromFile(f *os.File, owned bool) (*NS, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", f.Name(), err)
	}
	var fd int
	var statErr error
	if err := rc.Control(func(p uintptr) {
		fd = int(p)
		var st unix.Statfs_t
		if statErr = unix.Fstatfs(fd, &st); statErr != nil {
			return
		}
		if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
			statErr = fmt.Errorf("not a namespace file (filesystem type %#x)", st.Type)
		}
	}); err != nil {
		return nil, fmt.Errorf("network namespace %s: %w", f.Name(), err)
	}
	if statErr != nil {
		return nil, fmt.Errorf("network namespace %s: %w", f.Name(), statErr)
	}
	return &NS{f: f, fd: fd, owned: owned, name: f.Name()}, nil
}

// Name is the path the namespace was opened from.
func (n *NS) Name() string { return n.name }

// Fd is the namespace's file descriptor, valid until Close (or, for FromFile,
// until the caller closes its file).
func (n *NS) Fd() int { return n.fd }

// Close releases the handle. Sockets created inside the namespace keep it alive
// on their own.
func (n *NS) Close() error {
	if n == nil || !n.owned {
		return nil
	}
	if err := n.f.Close(); err != nil {
		return fmt.Errorf("close network namespace %s: %w", n.name, err)
	}
	return nil
}

// Do runs fn on an OS thread that is inside the namespace, then moves the
// thread back. fn runs on a fresh goroutine locked to its thread, so the
// caller's own thread state is never touched; fn must not start goroutines that
// expect to inherit the namespace. If the thread cannot be moved back it is
// left locked, and the Go runtime discards it when the goroutine ends, so a
// thread in the wrong namespace is never reused.
func (n *NS) Do(fn func() error) error {
	if n == nil {
		return errors.New("network namespace handle is nil")
	}
	errc := make(chan error, 1)
	go func() {
		errc <- n.doLocked(fn)
	}()
	return <-errc
}

func (n *NS) doLocked(fn func() error) (err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(netns.NsHandle(n.fd)); err != nil {
		// setns failed, so the thread is still where it was.
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", n.name, err)
	}
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
		// Not restored: stay locked; the runtime ends the thread with the goroutine.
	}()
	ferr := fn()
	if serr := netns.Set(orig); serr != nil {
		return errors.Join(ferr, fmt.Errorf("return from network namespace %s: %w", n.name, serr))
	}
	restored = true
	return ferr
}
