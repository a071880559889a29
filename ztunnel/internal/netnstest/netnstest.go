//go:build linux

// Package netnstest builds throwaway network namespaces for tests: anonymous
// namespaces (held only by a file descriptor, so they vanish with it even if
// the test process dies) joined by veth pairs created directly inside them.
// Nothing is created in, or routed to, the machine's root namespace.
package netnstest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// RequireRoot fails the test (it does not skip) when the process cannot
// create network namespaces.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatalf("this test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces; run it as root (CI does)")
	}
}

// New creates an anonymous network namespace with loopback up. The caller
// owns the returned handle; closing it is what deletes the namespace. It
// fails rather than return a handle on the namespace it was called from.
func New() (*podns.NS, error) {
	type result struct {
		f   *os.File
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("get current netns: %w", err)}
			return
		}
		defer orig.Close()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("unshare netns: %w", err)}
			return
		}
		// Open the new namespace while this thread is in it: the fd, not the
		// path (which follows the thread), is what refers to it afterwards.
		f, ferr := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: the runtime discards it.
			if f != nil {
				_ = f.Close()
			}
			ch <- result{err: fmt.Errorf("return to original netns: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		if ferr != nil {
			ch <- result{err: fmt.Errorf("open new netns: %w", ferr)}
			return
		}
		if same, err := sameNS(f, orig); err != nil || same {
			_ = f.Close()
			ch <- result{err: fmt.Errorf("new netns is not new (same %v, %v)", same, err)}
			return
		}
		ch <- result{f: f}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	ns, err := podns.Adopt(r.f)
	if err != nil {
		_ = r.f.Close()
		return nil, err
	}
	if err := setUp(ns, "lo"); err != nil {
		_ = ns.Close()
		return nil, err
	}
	// No IPv6 duplicate address detection on interfaces created later (the
	// veths): until DAD finishes on the link-local address, the first packets
	// to a neighbour are lost and TCP retransmits a second later.
	if err := ns.Do(func() error {
		return os.WriteFile("/proc/sys/net/ipv6/conf/default/accept_dad", []byte("0"), 0)
	}); err != nil && !errors.Is(err, os.ErrNotExist) {
		_ = ns.Close()
		return nil, fmt.Errorf("disable ipv6 dad: %w", err)
	}
	return ns, nil
}

func sameNS(f *os.File, h netns.NsHandle) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &a); err != nil {
		return false, err
	}
	if err := unix.Fstat(int(h), &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// IsHostNS reports whether ns is the network namespace of this process's
// main thread (the machine's root namespace when the tests run on the host).
func IsHostNS(ns *podns.NS) (bool, error) {
	var a, b unix.Stat_t
	if err := unix.Fstat(ns.Fd(), &a); err != nil {
		return false, err
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()), &b); err != nil {
		return false, err
	}
	return a.Dev == b.Dev && a.Ino == b.Ino, nil
}

// NewT is New for tests: the namespace is closed (deleted) at cleanup.
func NewT(tb testing.TB) *podns.NS {
	tb.Helper()
	ns, err := New()
	if err != nil {
		tb.Fatalf("create network namespace: %v", err)
	}
	tb.Cleanup(func() { _ = ns.Close() })
	if host, err := IsHostNS(ns); err != nil || host {
		tb.Fatalf("refusing to use a namespace that is the host's (host %v, %v)", host, err)
	}
	return ns
}

// NewNamedT creates a named network namespace (/var/run/netns/<name>, like
// `ip netns add`) with loopback up, opened by path, and deletes it at test
// cleanup.
func NewNamedT(tb testing.TB, name string) *podns.NS {
	tb.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err != nil {
			// NewNamed may have switched namespaces before failing.
			if serr := netns.Set(orig); serr == nil {
				runtime.UnlockOSThread()
			}
			errc <- err
			return
		}
		_ = h.Close()
		if err := netns.Set(orig); err != nil {
			errc <- err
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		tb.Fatalf("create named netns %s: %v", name, err)
	}
	tb.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil {
			tb.Errorf("delete named netns %s: %v", name, err)
		}
	})
	ns, err := podns.Open("/var/run/netns/" + name)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = ns.Close() })
	if host, err := IsHostNS(ns); err != nil || host {
		tb.Fatalf("refusing to use a namespace that is the host's (host %v, %v)", host, err)
	}
	if err := setUp(ns, "lo"); err != nil {
		tb.Fatal(err)
	}
	return ns
}

func setUp(ns *podns.NS, name string) error {
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("rtnetlink in netns: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// Pair is two namespaces joined by a veth: Pod (the enrolled pod) and Peer
// (another workload), each with one IPv4 and one IPv6 address on its end.
type Pair struct {
	NS       *podns.NS
	IP4, IP6 netip.Addr
	Link     string
	PeerNS   *podns.NS
	PeerIP4  netip.Addr
	PeerIP6  netip.Addr
	PeerLink string
}

// NewPair creates the two namespaces and the veth between them with
// addresses from 10.250.<n>.0/24 and fd00:250:<n>::/64 (n in 0..255), which
// live only inside these namespaces. Both are deleted at test cleanup.
func NewPair(tb testing.TB, n int) *Pair {
	tb.Helper()
	RequireRoot(tb)
	p := &Pair{
		NS:       NewT(tb),
		PeerNS:   NewT(tb),
		Link:     "vpod",
		PeerLink: "vpeer",
		IP4:      netip.AddrFrom4([4]byte{10, 250, byte(n), 2}),
		PeerIP4:  netip.AddrFrom4([4]byte{10, 250, byte(n), 1}),
	}
	p.IP6 = netip.MustParseAddr(fmt.Sprintf("fd00:250:%x::2", n))
	p.PeerIP6 = netip.MustParseAddr(fmt.Sprintf("fd00:250:%x::1", n))
	if err := p.wire(); err != nil {
		tb.Fatalf("wire veth pair: %v", err)
	}
	return p
}

func (p *Pair) wire() error {
	h, err := netlink.NewHandleAt(netns.NsHandle(p.NS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("rtnetlink in pod netns: %w", err)
	}
	defer h.Close()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.Link},
		PeerName:      p.PeerLink,
		PeerNamespace: netlink.NsFd(p.PeerNS.Fd()),
	}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("add veth: %w", err)
	}
	if err := configure(h, p.Link, p.IP4, p.IP6); err != nil {
		return fmt.Errorf("pod side: %w", err)
	}
	hp, err := netlink.NewHandleAt(netns.NsHandle(p.PeerNS.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("rtnetlink in peer netns: %w", err)
	}
	defer hp.Close()
	if err := configure(hp, p.PeerLink, p.PeerIP4, p.PeerIP6); err != nil {
		return fmt.Errorf("peer side: %w", err)
	}
	// Packets sent before the kernel has activated both ends (carrier on,
	// qdisc attached) are dropped, and a dropped SYN costs a 1 s retransmit.
	if err := waitOperUp(h, p.Link); err != nil {
		return err
	}
	return waitOperUp(hp, p.PeerLink)
}

func waitOperUp(h *netlink.Handle, name string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if l.Attrs().OperState == netlink.OperUp {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not operationally up after 5s (state %s)", name, l.Attrs().OperState)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func configure(h *netlink.Handle, name string, ip4, ip6 netip.Addr) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("find %s: %w", name, err)
	}
	a4 := &netlink.Addr{IPNet: &net.IPNet{IP: ip4.AsSlice(), Mask: net.CIDRMask(24, 32)}}
	if err := h.AddrAdd(l, a4); err != nil {
		return fmt.Errorf("add %s to %s: %w", ip4, name, err)
	}
	// No duplicate address detection: the address is usable at once.
	a6 := &netlink.Addr{IPNet: &net.IPNet{IP: ip6.AsSlice(), Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}
	if err := h.AddrAdd(l, a6); err != nil {
		return fmt.Errorf("add %s to %s: %w", ip6, name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// CountFDs is the number of open file descriptors of this process.
func CountFDs() (int, error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, fmt.Errorf("read /proc/self/fd: %w", err)
	}
	return len(ents), nil
}
