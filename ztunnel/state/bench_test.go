package state

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// benchStore holds 10,000 workloads behind 1,000 services (10 each), on
// 100 nodes, and returns it with the workloads.
func benchStore(b *testing.B) (*Store, []*workloadv1.Workload) {
	s := NewStore()
	var res []*discovery.Resource
	var wls []*workloadv1.Workload
	for i := range 1000 {
		res = append(res, addrs(b, svc(fmt.Sprintf("svc-%d", i), fmt.Sprintf("10.96.%d.%d", i/256, i%256), 80, 8080))...)
	}
	for i := range 10000 {
		w := wl(fmt.Sprintf("pod-%d", i), fmt.Sprintf("10.1.%d.%d", i/256, i%256),
			backs(svcKey(fmt.Sprintf("svc-%d", i%1000)), 80, 8080), onNode(fmt.Sprintf("node-%d", i%100)))
		wls = append(wls, w)
		res = append(res, addrs(b, w)...)
	}
	mustHandle(b, s, addrURL, res)
	return s, wls
}

// BenchmarkStoreUpdate is one pod readiness flip (one Workload resource)
// applied to a 10,000-workload store, decoding included, with the
// endpoints of its service read back (which rebuilds that service's list).
func BenchmarkStoreUpdate(b *testing.B) {
	s, wls := benchStore(b)
	w := wls[4242]
	flip := []*workloadv1.Workload{wl(w.GetName(), "10.1.16.146", backs(svcKey("svc-242"), 80, 8080), onNode(w.GetNode()), unhealthy),
		wl(w.GetName(), "10.1.16.146", backs(svcKey("svc-242"), 80, 8080), onNode(w.GetNode()))}
	res := [][]*discovery.Resource{addrs(b, flip[0]), addrs(b, flip[1])}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := s.Handle(addrURL, res[i%2], nil); err != nil {
			b.Fatal(err)
		}
		if n := len(s.ReadyEndpoints(svcKey("svc-242"))); n != 9+i%2 {
			b.Fatalf("ready endpoints %d", n)
		}
		i++
	}
}

// BenchmarkFindDestination looks up pod IPs and VIPs in the 10,000-workload
// store and, in the same run, the same IPs in a plain map[netip.Addr]
// (no lock, no network): the baseline. It reports both and the ratio.
func BenchmarkFindDestination(b *testing.B) {
	s, wls := benchStore(b)
	var ips []netip.Addr
	baseline := map[netip.Addr]*workloadv1.Workload{}
	for i, w := range wls {
		a, _ := netip.AddrFromSlice(w.GetAddresses()[0])
		baseline[a] = w
		if i%10 == 0 {
			ips = append(ips, a)
		}
	}
	b.ReportAllocs()
	var storeTime, mapTime time.Duration
	n := 0
	for b.Loop() {
		ip := ips[n%len(ips)]
		t0 := time.Now()
		for range 100 {
			if !s.FindDestination("", ip).Found() {
				b.Fatal("not found")
			}
		}
		t1 := time.Now()
		for range 100 {
			if baseline[ip] == nil {
				b.Fatal("not found")
			}
		}
		t2 := time.Now()
		storeTime += t1.Sub(t0)
		mapTime += t2.Sub(t1)
		n++
	}
	lookups := float64(n * 100)
	b.ReportMetric(float64(storeTime.Nanoseconds())/lookups, "ns/store-lookup")
	b.ReportMetric(float64(mapTime.Nanoseconds())/lookups, "ns/map-lookup")
	b.ReportMetric(float64(storeTime)/float64(mapTime), "x-map")
}

// BenchmarkFindDestinationParallel: lookups from every core while one
// goroutine applies a workload update every 100µs (the read lock is shared
// with a writer).
func BenchmarkFindDestinationParallel(b *testing.B) {
	s, wls := benchStore(b)
	w := wls[4242]
	res := [][]*discovery.Resource{
		addrs(b, wl(w.GetName(), "10.1.16.146", backs(svcKey("svc-242"), 80, 8080), onNode(w.GetNode()), unhealthy)),
		addrs(b, wl(w.GetName(), "10.1.16.146", backs(svcKey("svc-242"), 80, 8080), onNode(w.GetNode()))),
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Microsecond)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = s.Handle(addrURL, res[i%2], nil)
			}
		}
	})
	ip := netip.MustParseAddr("10.1.16.146")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if !s.FindDestination("", ip).Found() {
				b.Error("not found")
				return
			}
		}
	})
	close(stop)
	wg.Wait()
}

// BenchmarkPoliciesFor: the policy list of a workload that lists two
// selector policies, with 2 global and 5 namespace policies.
func BenchmarkPoliciesFor(b *testing.B) {
	s := NewStore()
	var res []*discovery.Resource
	for i := range 2 {
		res = append(res, resource(b, fmt.Sprintf("istio-system/g%d", i), &workloadv1.Authorization{Name: fmt.Sprintf("g%d", i), Namespace: "istio-system"}))
	}
	for i := range 5 {
		res = append(res, resource(b, fmt.Sprintf("ns/n%d", i), &workloadv1.Authorization{Name: fmt.Sprintf("n%d", i), Namespace: "ns",
			Scope: workloadv1.AuthorizationScope_NAMESPACE}))
	}
	for i := range 2 {
		res = append(res, resource(b, fmt.Sprintf("ns/s%d", i), &workloadv1.Authorization{Name: fmt.Sprintf("s%d", i), Namespace: "ns",
			Scope: workloadv1.AuthorizationScope_WORKLOAD_SELECTOR}))
	}
	mustHandle(b, s, authzURL, res)
	w := wl("a", "10.0.0.1", withPolicies("ns/s0", "ns/s1"))
	b.ReportAllocs()
	for b.Loop() {
		if len(s.PoliciesFor(w)) != 9 {
			b.Fatal("wrong policies")
		}
	}
}
