//go:build linux

package enroll_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// nsPath is a path that opens ns for as long as the test holds it.
func nsPath(ns *podns.NS) string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), ns.Fd()) }

func sameNS(t *testing.T, a, b *podns.NS) bool {
	t.Helper()
	var sa, sb unix.Stat_t
	if err := unix.Fstat(a.Fd(), &sa); err != nil {
		t.Fatal(err)
	}
	if err := unix.Fstat(b.Fd(), &sb); err != nil {
		t.Fatal(err)
	}
	return sa.Dev == sb.Dev && sa.Ino == sb.Ino
}

// startSleeper runs a `sleep` process inside ns (forked from a thread that
// has entered it), as a pod's container process would be, and kills it at
// cleanup.
func startSleeper(t *testing.T, ns *podns.NS) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "600")
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ns.Do(cmd.Start); err != nil {
		t.Fatalf("start sleep in netns: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func TestFindNetnsByIP(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.NewPair(t, 201)
	cmd := startSleeper(t, p.NS)
	// The sleeper's /proc entry points at the pod's namespace.
	procNS, err := podns.Open(fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	defer procNS.Close()
	if !sameNS(t, procNS, p.NS) {
		t.Fatal("sleep did not start in the pod's namespace")
	}
	for _, ip := range []netip.Addr{p.IP4, p.IP6, netip.AddrFrom16(p.IP4.As16())} {
		start := time.Now()
		ns, err := enroll.FindNetnsByIP(ip)
		if err != nil {
			t.Fatalf("find %s: %v", ip, err)
		}
		t.Logf("found the namespace of %s in %v", ip, time.Since(start))
		if !sameNS(t, ns, p.NS) {
			t.Fatalf("find %s: wrong namespace %s", ip, ns.Name())
		}
		if host, err := netnstest.IsHostNS(ns); err != nil || host {
			t.Fatalf("returned the host namespace (%v)", err)
		}
		_ = ns.Close()
	}
	// The peer's namespace has no process in it: not found.
	if _, err := enroll.FindNetnsByIP(p.PeerIP4); !errors.Is(err, enroll.ErrNetnsNotFound) {
		t.Fatalf("peer address: want ErrNetnsNotFound, got %v", err)
	}
	if _, err := enroll.FindNetnsByIP(netip.MustParseAddr("10.250.254.254")); !errors.Is(err, enroll.ErrNetnsNotFound) {
		t.Fatalf("unknown address: want ErrNetnsNotFound, got %v", err)
	}
}

type recorder struct {
	mu       sync.Mutex
	enrolled map[string]*inpod.Listeners
	released []string
	acc      *netnstest.Acceptor
}

func newRecorder(t *testing.T) *recorder {
	return &recorder{enrolled: map[string]*inpod.Listeners{}, acc: netnstest.NewAcceptor(t)}
}

func (r *recorder) opts(t *testing.T) enroll.EnrollerOptions {
	return enroll.EnrollerOptions{
		Log: testLog(t),
		OnEnrolled: func(p enroll.Pod, _ *podns.NS, lns *inpod.Listeners) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.enrolled[p.Key()] = lns
			// The proxy's part, in miniature: serve the listeners.
			r.acc.Watch(p.Name+"/hbone", lns.HBONE)
			r.acc.Watch(p.Name+"/outbound", lns.Outbound)
			r.acc.Watch(p.Name+"/inbound", lns.Inbound)
		},
		OnReleased: func(ref enroll.PodRef) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.released = append(r.released, ref.Key())
			delete(r.enrolled, ref.Key())
		},
	}
}

func newEnroller(t *testing.T, opts enroll.EnrollerOptions) *enroll.Enroller {
	t.Helper()
	e, err := enroll.NewEnroller(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func checkRules(t *testing.T, ns *podns.NS, wantCurrent bool) {
	t.Helper()
	st, err := capture.Check(ns, capture.DefaultConfig())
	if err != nil {
		t.Fatal(err)
	}
	if wantCurrent && !st.Current {
		t.Fatalf("rules not current: %q", st.Problems)
	}
	if !wantCurrent && st.Present() {
		t.Fatalf("rules still present: %q", st.Problems)
	}
}

func dialFrom(ns *podns.NS, addr netip.AddrPort) (net.Conn, error) {
	d := inpod.Dialer{NS: ns, Timeout: 2 * time.Second}
	return d.DialContext(context.Background(), "tcp", addr.String())
}

func TestEnrollRealTrafficAndRelease(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.NewPair(t, 202)
	r := newRecorder(t)
	e := newEnroller(t, r.opts(t))
	ctx := context.Background()
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "web", UID: "u1", ContainerID: "c1"}, Netns: nsPath(p.NS), IPs: []netip.Addr{p.IP4, p.IP6}}

	if err := e.Enroll(ctx, pod); err != nil {
		t.Fatal(err)
	}
	checkRules(t, p.NS, true)
	// HBONE from another workload reaches the ztunnel's listener in the pod.
	c, err := dialFrom(p.PeerNS, netip.AddrPortFrom(p.IP4, capture.HBONEPort))
	if err != nil {
		t.Fatal(err)
	}
	r.acc.Expect(t, "web/hbone")
	_ = c.Close()
	// Inbound plaintext to an application port is diverted to 15006.
	c, err = dialFrom(p.PeerNS, netip.AddrPortFrom(p.IP6, 8080))
	if err != nil {
		t.Fatal(err)
	}
	r.acc.Expect(t, "web/inbound")
	_ = c.Close()
	// The pod's outbound TCP lands on 15001.
	c, err = (&inpod.Dialer{NS: p.NS, Timeout: 2 * time.Second}).DialContext(ctx, "tcp", netip.AddrPortFrom(p.PeerIP4, 80).String())
	if err != nil {
		t.Fatal(err)
	}
	r.acc.Expect(t, "web/outbound")
	_ = c.Close()
	if err := e.Check(ctx, pod.PodRef); err != nil {
		t.Fatal(err)
	}

	// Idempotent: enrolling again changes nothing and does not call back.
	if err := e.Enroll(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if st := e.Stats(); st.Enrolled != 1 || st.Applied != 1 || st.Adopted != 0 {
		t.Fatalf("stats %+v", st)
	}
	if got := e.Enrolled(); len(got) != 1 || got[0].UID != "u1" {
		t.Fatalf("enrolled %+v", got)
	}

	// A late DEL for another sandbox of the pod is ignored.
	if err := e.Release(ctx, enroll.PodRef{Namespace: "ns", Name: "web", UID: "u1", ContainerID: "old"}); err != nil {
		t.Fatal(err)
	}
	checkRules(t, p.NS, true)

	if err := e.Release(ctx, pod.PodRef); err != nil {
		t.Fatal(err)
	}
	checkRules(t, p.NS, false)
	if _, err := dialFrom(p.PeerNS, netip.AddrPortFrom(p.IP4, capture.HBONEPort)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("after release, 15008: want connection refused, got %v", err)
	}
	if err := e.Release(ctx, pod.PodRef); err != nil {
		t.Fatalf("second release: %v", err)
	}
	if err := e.Check(ctx, pod.PodRef); !errors.Is(err, enroll.ErrNotEnrolled) {
		t.Fatalf("check after release: %v", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.released) != 1 || len(r.enrolled) != 0 {
		t.Fatalf("callbacks: released %v, enrolled %v", r.released, r.enrolled)
	}
}

// TestEnrollByIP: a pod whose namespace path is unknown (enrolled later,
// when its namespace gains the label) is found through /proc.
func TestEnrollByIP(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.NewPair(t, 203)
	startSleeper(t, p.NS)
	r := newRecorder(t)
	e := newEnroller(t, r.opts(t))
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "late", UID: "u2"}, IPs: []netip.Addr{p.IP4}}
	if err := e.Enroll(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	checkRules(t, p.NS, true)
	c, err := dialFrom(p.PeerNS, netip.AddrPortFrom(p.IP4, capture.HBONEPort))
	if err != nil {
		t.Fatal(err)
	}
	r.acc.Expect(t, "late/hbone")
	_ = c.Close()
	if err := e.Release(context.Background(), pod.PodRef); err != nil {
		t.Fatal(err)
	}
	checkRules(t, p.NS, false)
}

// TestRestartReadopts: a ztunnel that stops leaves the rules; the next one
// re-adopts the pod (rules untouched, listeners reopened).
func TestRestartReadopts(t *testing.T) {
	netnstest.RequireRoot(t)
	p := netnstest.NewPair(t, 204)
	ctx := context.Background()
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "web", UID: "u3"}, Netns: nsPath(p.NS)}

	r1 := newRecorder(t)
	e1 := newEnroller(t, r1.opts(t))
	if err := e1.Enroll(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := e1.Close(); err != nil {
		t.Fatal(err)
	}
	checkRules(t, p.NS, true) // still captured: fail closed while no ztunnel runs
	if _, err := dialFrom(p.PeerNS, netip.AddrPortFrom(p.IP4, capture.HBONEPort)); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("listeners survived Close: %v", err)
	}
	if err := e1.Enroll(ctx, pod); err == nil {
		t.Fatal("enroll after close succeeded")
	}

	r2 := newRecorder(t)
	e2 := newEnroller(t, r2.opts(t))
	if err := e2.Reconcile(ctx, []enroll.Pod{pod}); err != nil {
		t.Fatal(err)
	}
	if st := e2.Stats(); st.Adopted != 1 || st.Applied != 0 || st.Enrolled != 1 {
		t.Fatalf("stats %+v", st)
	}
	c, err := dialFrom(p.PeerNS, netip.AddrPortFrom(p.IP4, capture.HBONEPort))
	if err != nil {
		t.Fatal(err)
	}
	r2.acc.Expect(t, "web/hbone")
	_ = c.Close()
}

func TestReconcileFlips(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx := context.Background()
	var pods []enroll.Pod
	var nss []*podns.NS
	for i := range 4 {
		ns := netnstest.NewT(t)
		nss = append(nss, ns)
		pods = append(pods, enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: fmt.Sprintf("p%d", i), UID: fmt.Sprintf("u%d", i)}, Netns: nsPath(ns)})
	}
	r := newRecorder(t)
	e := newEnroller(t, r.opts(t))
	// The namespace gains the label: every pod enrolled.
	if err := e.Reconcile(ctx, pods); err != nil {
		t.Fatal(err)
	}
	for _, ns := range nss {
		checkRules(t, ns, true)
	}
	// p0 is relabelled none, p1 deleted: released.
	if err := e.Reconcile(ctx, pods[2:]); err != nil {
		t.Fatal(err)
	}
	checkRules(t, nss[0], false)
	checkRules(t, nss[1], false)
	checkRules(t, nss[2], true)
	// The namespace loses the label: all released.
	if err := e.Reconcile(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, ns := range nss {
		checkRules(t, ns, false)
	}
	if st := e.Stats(); st.Enrolled != 0 || st.Released != 4 {
		t.Fatalf("stats %+v", st)
	}
}

// TestReleasePodUnregistered: rules left by an earlier ztunnel for a pod
// that is no longer wanted are removed without a registry entry.
func TestReleasePodUnregistered(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewT(t)
	if err := capture.Apply(ns, capture.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	e := newEnroller(t, enroll.EnrollerOptions{Log: testLog(t)})
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "old"}, Netns: nsPath(ns)}
	if err := e.ReleasePod(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	checkRules(t, ns, false)
	// Unknown everything: nothing to do.
	if err := e.ReleasePod(context.Background(), enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "gone"}, Netns: "/nonexistent"}); err != nil {
		t.Fatal(err)
	}
}

func TestNewSandboxReplacesOld(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx := context.Background()
	oldNS, newNS := netnstest.NewT(t), netnstest.NewT(t)
	r := newRecorder(t)
	e := newEnroller(t, r.opts(t))
	ref := enroll.PodRef{Namespace: "ns", Name: "web", UID: "u4", ContainerID: "sandbox-1"}
	if err := e.Enroll(ctx, enroll.Pod{PodRef: ref, Netns: nsPath(oldNS)}); err != nil {
		t.Fatal(err)
	}
	ref2 := ref
	ref2.ContainerID = "sandbox-2"
	if err := e.Enroll(ctx, enroll.Pod{PodRef: ref2, Netns: nsPath(newNS)}); err != nil {
		t.Fatal(err)
	}
	checkRules(t, oldNS, false)
	checkRules(t, newNS, true)
	// The old sandbox's late DEL does not touch the new one.
	if err := e.Release(ctx, ref); err != nil {
		t.Fatal(err)
	}
	checkRules(t, newNS, true)
	if err := e.Check(ctx, ref2); err != nil {
		t.Fatal(err)
	}
}

func TestEnrollRepairsFlushedRules(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewT(t)
	e := newEnroller(t, enroll.EnrollerOptions{Log: testLog(t)})
	ctx := context.Background()
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "web", UID: "u5"}, Netns: nsPath(ns)}
	if err := e.Enroll(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := capture.Remove(ns, capture.DefaultConfig()); err != nil {
		t.Fatal(err)
	}
	if err := e.Check(ctx, pod.PodRef); err == nil || !strings.Contains(err.Error(), "not current") {
		t.Fatalf("check after flush: %v", err)
	}
	if err := e.Enroll(ctx, pod); err != nil {
		t.Fatal(err)
	}
	checkRules(t, ns, true)
	if st := e.Stats(); st.Repaired != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestEnrollFailureLeavesNothing: when a listener cannot be opened (the port
// is taken inside the pod), the rules programmed for it are taken back.
func TestEnrollFailureLeavesNothing(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.NewT(t)
	squatter, err := inpod.Listen(context.Background(), ns, ":15008", inpod.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	e := newEnroller(t, enroll.EnrollerOptions{Log: testLog(t)})
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "web", UID: "u6"}, Netns: nsPath(ns)}
	if err := e.Enroll(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("want address in use, got %v", err)
	}
	checkRules(t, ns, false)
	if st := e.Stats(); st.Enrolled != 0 || st.Failed != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRefusesHostNamespace: the namespaces configured as the host's are
// never captured. (A throwaway namespace plays the host here, so that a bug
// could never program the machine's real one.)
func TestRefusesHostNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	fakeHost := netnstest.NewT(t)
	e := newEnroller(t, enroll.EnrollerOptions{Log: testLog(t), HostNetns: []string{nsPath(fakeHost)}})
	pod := enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: "hostnet", UID: "u7"}, Netns: nsPath(fakeHost)}
	if err := e.Enroll(context.Background(), pod); err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Fatalf("want refusal, got %v", err)
	}
	checkRules(t, fakeHost, false)
}
