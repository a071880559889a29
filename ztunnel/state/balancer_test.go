package state

import (
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

func seeded(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed)) }

// lbStore: service "web" (80 -> 8080, 443 -> named) with endpoints w1..w4;
// w3 unready, w4 without an address; w2 does not serve 443.
func lbStore(t *testing.T) *Store {
	s := NewStore()
	key := svcKey("web")
	mustHandle(t, s, addrURL, addrs(t,
		svc("web", "10.96.0.10", 80, 8080, 443, 0, 9000, 0),
		wl("w1", "10.0.0.1", backs(key, 80, 8080, 443, 8443)),
		wl("w2", "10.0.0.2", backs(key, 80, 8080)),
		wl("w3", "10.0.0.3", backs(key, 80, 8080, 443, 8443), unhealthy),
		wl("w4", "", backs(key, 80, 8080, 443, 8443)),
		wl("w5", "10.0.0.5", backs(key, 80, 8080, 443, 9443)),
	))
	return s
}

func TestRoundRobin(t *testing.T) {
	s := lbStore(t)
	b := NewBalancer(s, BalancerOptions{Policy: RoundRobin})
	var got []string
	for range 6 {
		tg, err := b.Pick(svcKey("web"), 80)
		if err != nil {
			t.Fatal(err)
		}
		if tg.Port != 8080 {
			t.Errorf("port %d", tg.Port)
		}
		got = append(got, tg.Workload.GetName())
	}
	if want := []string{"w1", "w2", "w5", "w1", "w2", "w5"}; !slices.Equal(got, want) {
		t.Errorf("port 80 order %v, want %v (unready and address-less skipped)", got, want)
	}
	// Port 443: w2 does not serve it; named target ports resolve per
	// workload.
	got = got[:0]
	var ports []uint16
	for range 4 {
		tg, err := b.Pick(svcKey("web"), 443)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, tg.Workload.GetName())
		ports = append(ports, tg.Port)
	}
	if !slices.Contains(got, "w1") || !slices.Contains(got, "w5") || slices.Contains(got, "w2") {
		t.Errorf("port 443 picks %v", got)
	}
	for i, name := range got {
		if want := map[string]uint16{"w1": 8443, "w5": 9443}[name]; ports[i] != want {
			t.Errorf("%s port %d, want %d", name, ports[i], want)
		}
	}
}

func TestPickErrors(t *testing.T) {
	s := lbStore(t)
	b := NewBalancer(s, BalancerOptions{})
	for _, tc := range []struct {
		service string
		port    uint16
		want    error
	}{
		{svcKey("nope"), 80, ErrUnknownService},
		{svcKey("web"), 81, ErrNoPort},
		{svcKey("web"), 9000, ErrNoEndpoint}, // named port nobody serves
	} {
		if _, err := b.Pick(tc.service, tc.port); !errors.Is(err, tc.want) {
			t.Errorf("%s:%d: %v, want %v", tc.service, tc.port, err, tc.want)
		}
	}
	// Every endpoint unready: no fallback to unready ones.
	mustHandle(t, s, addrURL, nil, uidOf("w1"), uidOf("w2"), uidOf("w5"))
	for _, p := range []LBPolicy{RoundRobin, LeastRequests} {
		b := NewBalancer(s, BalancerOptions{Policy: p, Rand: seeded(1)})
		if _, err := b.Pick(svcKey("web"), 80); !errors.Is(err, ErrNoEndpoint) {
			t.Errorf("policy %d, all unready: %v", p, err)
		}
	}
}

func TestLeastRequests(t *testing.T) {
	s := lbStore(t)
	key := svcKey("web")
	picks := func(seed uint64, n int, acquire bool) []string {
		b := NewBalancer(s, BalancerOptions{Policy: LeastRequests, Rand: seeded(seed)})
		var out []string
		for range n {
			tg, err := b.Pick(key, 80)
			if err != nil {
				t.Fatal(err)
			}
			if acquire {
				b.Acquire(tg.Workload.GetUid())
			}
			out = append(out, tg.Workload.GetName())
		}
		return out
	}
	// Deterministic for a seed.
	if a, b := picks(7, 20, false), picks(7, 20, false); !slices.Equal(a, b) {
		t.Errorf("same seed, different picks: %v vs %v", a, b)
	}
	// Only ready endpoints.
	for _, name := range picks(3, 200, false) {
		if name != "w1" && name != "w2" && name != "w5" {
			t.Fatalf("picked %s", name)
		}
	}
	// With connections held, load spreads evenly: power of two choices
	// never picks the busier of two endpoints, which keeps the spread small
	// (the seed makes the run repeatable).
	b := NewBalancer(s, BalancerOptions{Policy: LeastRequests, Rand: seeded(11)})
	for range 30 {
		tg, err := b.Pick(key, 80)
		if err != nil {
			t.Fatal(err)
		}
		b.Acquire(tg.Workload.GetUid())
	}
	counts := []int64{b.InFlight(uidOf("w1")), b.InFlight(uidOf("w2")), b.InFlight(uidOf("w5"))}
	if slices.Max(counts)-slices.Min(counts) > 3 || counts[0]+counts[1]+counts[2] != 30 {
		t.Errorf("in flight %v", counts)
	}
	// A busy endpoint is avoided.
	b = NewBalancer(s, BalancerOptions{Policy: LeastRequests, Rand: seeded(5)})
	for range 100 {
		b.Acquire(uidOf("w1"))
	}
	for range 50 {
		tg, _ := b.Pick(key, 80)
		if tg.Workload.GetName() == "w1" {
			t.Fatal("picked the busy endpoint over an idle one")
		}
	}
	// Release bookkeeping.
	b.Release(uidOf("w1"))
	if n := b.InFlight(uidOf("w1")); n != 99 {
		t.Errorf("in flight %d", n)
	}
	b.Release(uidOf("nobody"))
	if n := b.InFlight(uidOf("nobody")); n != 0 {
		t.Errorf("over-release: %d", n)
	}
	// Port 443: w2 cannot serve it, whatever the two random choices.
	b = NewBalancer(s, BalancerOptions{Policy: LeastRequests, Rand: seeded(9)})
	for range 100 {
		tg, err := b.Pick(key, 443)
		if err != nil || tg.Workload.GetName() == "w2" {
			t.Fatalf("port 443: %v %v", tg.Workload.GetName(), err)
		}
	}
}

func TestSingleEndpoint(t *testing.T) {
	s := NewStore()
	mustHandle(t, s, addrURL, addrs(t, svc("one", "10.96.0.1", 80, 0), wl("only", "10.0.0.1", backs(svcKey("one"), 80, 8080))))
	for _, p := range []LBPolicy{RoundRobin, LeastRequests} {
		b := NewBalancer(s, BalancerOptions{Policy: p})
		tg, err := b.Pick(svcKey("one"), 80)
		if err != nil || tg.Workload.GetName() != "only" || tg.Port != 8080 {
			t.Errorf("policy %d: %+v %v", p, tg, err)
		}
	}
	// Endpoint.TargetPort falls back to the service's numeric port.
	ep := Endpoint{Workload: &workloadv1.Workload{}}
	if p, ok := ep.TargetPort(svc("x", "", 80, 8081), 80); !ok || p != 8081 {
		t.Errorf("fallback %d %v", p, ok)
	}
}
