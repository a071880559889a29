//go:build linux

package enroll

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// ErrNetnsNotFound is returned (wrapped) by FindNetnsByIP when no process's
// network namespace carries the address.
var ErrNetnsNotFound = errors.New("no network namespace carries the address")

// nsID identifies a namespace (the nsfs inode).
type nsID struct{ dev, ino uint64 }

func statID(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, err
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

func fdID(fd int) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nsID{}, err
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// defaultHostNetns are the namespaces never enrolled nor returned by a scan:
// the node's (init's, visible with hostPID) and the ztunnel's own.
var defaultHostNetns = []string{"/proc/1/ns/net", "/proc/self/ns/net"}

func hostIDs(paths []string) map[nsID]bool {
	ids := make(map[nsID]bool, len(paths))
	for _, p := range paths {
		if id, err := statID(p); err == nil {
			ids[id] = true
		}
	}
	return ids
}

// FindNetnsByIP finds the network namespace of a running pod by one of its
// addresses: it scans /proc/<pid>/ns/net of every process (the ztunnel runs
// with hostPID), visits each distinct namespace once, and returns an open
// handle on the one with an interface carrying ip. The node's namespace
// (/proc/1/ns/net) and the ztunnel's own are never returned. The caller
// closes the handle.
func FindNetnsByIP(ip netip.Addr) (*podns.NS, error) {
	return findNetnsByIP("/proc", hostIDs(defaultHostNetns), ip)
}

func findNetnsByIP(procRoot string, skip map[nsID]bool, ip netip.Addr) (*podns.NS, error) {
	ip = ip.Unmap()
	if !ip.IsValid() {
		return nil, errors.New("enroll: find netns: invalid address")
	}
	ents, err := os.ReadDir(procRoot)
	if err != nil {
		return nil, fmt.Errorf("enroll: find netns of %s: %w", ip, err)
	}
	seen := make(map[nsID]bool)
	for id := range skip {
		seen[id] = true
	}
	var errs []error
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		path := filepath.Join(procRoot, e.Name(), "ns", "net")
		id, err := statID(path)
		if err != nil {
			continue // the process exited, or is a kernel thread
		}
		if seen[id] {
			continue
		}
		seen[id] = true
		ns, err := podns.Open(path)
		if err != nil {
			continue // exited since the stat
		}
		// The process may have exited and its pid been reused between
		// the stat and the open: the handle must be the namespace we meant.
		if got, err := fdID(ns.Fd()); err != nil || got != id || skip[got] {
			_ = ns.Close()
			continue
		}
		has, err := hasAddr(ns, ip)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", path, err))
			_ = ns.Close()
			continue
		}
		if has {
			return ns, nil
		}
		_ = ns.Close()
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("enroll: find netns of %s: %w (also: %w)", ip, ErrNetnsNotFound, errors.Join(errs...))
	}
	return nil, fmt.Errorf("enroll: find netns of %s: %w", ip, ErrNetnsNotFound)
}

// hasAddr reports whether an interface in ns carries ip.
func hasAddr(ns *podns.NS, ip netip.Addr) (bool, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("rtnetlink: %w", err)
	}
	defer h.Close()
	family := netlink.FAMILY_V4
	if ip.Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := h.AddrList(nil, family)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			return true, nil
		}
	}
	return false, nil
}

// FindNodeNetns opens the node's network namespace: the one carrying the
// node's address ip. That is init's (/proc/1/ns/net, visible with hostPID)
// on a real node; where nodes are network namespaces sharing one machine
// (devcluster), it is another process's, the kubelet's, found by a scan.
// The ztunnel's own namespace is never returned. The caller closes it.
func FindNodeNetns(ip netip.Addr) (*podns.NS, error) {
	ip = ip.Unmap()
	if ns, err := podns.Open("/proc/1/ns/net"); err == nil {
		if has, err := hasAddr(ns, ip); err == nil && has {
			return ns, nil
		}
		_ = ns.Close()
	}
	ns, err := findNetnsByIP("/proc", hostIDs([]string{"/proc/self/ns/net"}), ip)
	if err != nil {
		return nil, fmt.Errorf("enroll: node network namespace: %w", err)
	}
	return ns, nil
}
