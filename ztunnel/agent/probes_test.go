package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"testing"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
)

// The node's probe targets follow enrollment; an address a newer pod took
// over (IP reuse, release after the new enrollment) stays a target.
func TestProbeTargetsFollowEnrollment(t *testing.T) {
	netnstest.RequireRoot(t)
	node := netnstest.NewT(t)
	if err := capture.ApplyProbeSNAT(node, nil); err != nil {
		t.Fatal(err)
	}
	p := &probeTargets{ns: node, log: slog.Default(), byPod: map[string][]netip.Addr{}}
	ip := func(s string) netip.Addr { return netip.MustParseAddr(s) }
	pod := func(name string, ips ...netip.Addr) enroll.Pod {
		return enroll.Pod{PodRef: enroll.PodRef{Namespace: "ns", Name: name, UID: name}, IPs: ips}
	}
	want := func(ips ...netip.Addr) {
		t.Helper()
		got, err := capture.ProbeTargets(node)
		if err != nil || !slices.Equal(got, ips) {
			t.Fatalf("targets %v (%v), want %v", got, err, ips)
		}
	}
	a, b := pod("a", ip("10.0.0.1"), ip("fd00::1")), pod("b", ip("10.0.0.2"))
	p.enrolled(a)
	p.enrolled(b)
	want(ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1"))
	reuse := pod("c", ip("10.0.0.1"))
	p.enrolled(reuse)
	p.released(a.PodRef)
	want(ip("10.0.0.1"), ip("10.0.0.2"))
	p.released(reuse.PodRef)
	p.released(b.PodRef)
	p.released(b.PodRef) // twice: nothing to do
	want()

	var none *probeTargets // no node namespace: every call is a no-op
	none.enrolled(a)
	none.released(a.PodRef)
	none.close()
}
