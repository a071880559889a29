package upstream

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/config"
)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func endpoints(n int) []config.Endpoint {
	var out []config.Endpoint
	for i := range n {
		out = append(out, config.Endpoint{Address: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), Weight: 1})
	}
	return out
}

func manager(t *testing.T, cfg *config.Cluster, eps []config.Endpoint) (*Manager, *clock) {
	clk := &clock{now: time.Unix(1000, 0)}
	m := NewManager(Options{Now: clk.Now})
	cfg.Name, cfg.ServiceName, cfg.EDS = "c", "c", true
	if cfg.HealthyPanicThreshold == 0 {
		cfg.HealthyPanicThreshold = 50
	}
	m.Update(&config.Snapshot{Clusters: map[string]*config.Cluster{"c": cfg}, Assignments: map[string][]config.Endpoint{"c": eps}})
	return m, clk
}

func TestRoundRobinAndLeastRequest(t *testing.T) {
	m, _ := manager(t, &config.Cluster{}, endpoints(3))
	c := m.Cluster("c")
	counts := map[*Host]int{}
	for range 300 {
		h, err := c.Pick(nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[h]++
	}
	for h, n := range counts {
		if n != 100 {
			t.Errorf("round robin: %s picked %d times of 300", h.Address(), n)
		}
	}

	m, _ = manager(t, &config.Cluster{LeastRequest: true}, endpoints(2))
	c = m.Cluster("c")
	busy := c.Hosts()[0]
	for range 5 {
		busy.Begin()
	}
	// Two random choices pick the busy host only when both are it (1/4).
	idle := 0
	for range 1000 {
		if h, _ := c.Pick(nil); h != busy {
			idle++
		}
	}
	if idle < 700 {
		t.Errorf("least request chose the idle host %d/1000 times, want about 750", idle)
	}
	// Avoiding previous hosts.
	for range 50 {
		if h, _ := c.Pick([]*Host{busy}); h == busy {
			t.Fatal("previous host picked again")
		}
	}
}

func TestOutlierEjectionAndReturn(t *testing.T) {
	od := &config.Outlier{Consecutive5xx: 3, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 5,
		Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionTime: 300 * time.Second, MaxEjectionPercent: 50}
	m, clk := manager(t, &config.Cluster{Outlier: od}, endpoints(4))
	c := m.Cluster("c")
	hs := c.Hosts()
	bad := hs[0]
	bad.Report(Error5xx)
	bad.Report(Error5xx)
	bad.Report(Success) // resets the streak
	bad.Report(Error5xx)
	bad.Report(GatewayFailure)
	if bad.Ejected() {
		t.Fatal("ejected before 3 consecutive errors")
	}
	bad.Report(Error5xx)
	if !bad.Ejected() {
		t.Fatal("not ejected after 3 consecutive 5xx")
	}
	for range 100 {
		if h, _ := c.Pick(nil); h == bad {
			t.Fatal("ejected host picked")
		}
	}
	// max_ejection_percent 50 of 4 hosts: a second may go, a third may not.
	for _, h := range hs[1:] {
		for range 3 {
			h.Report(Error5xx)
		}
	}
	ejected := 0
	for _, h := range hs {
		if h.Ejected() {
			ejected++
		}
	}
	if ejected != 2 {
		t.Errorf("%d hosts ejected, want 2 (max_ejection_percent 50)", ejected)
	}
	clk.add(31 * time.Second)
	if bad.Ejected() {
		t.Error("host not back after base_ejection_time")
	}
	// The second ejection lasts twice as long.
	for range 3 {
		bad.Report(Error5xx)
	}
	clk.add(31 * time.Second)
	if !bad.Ejected() {
		t.Error("second ejection shorter than 2x base")
	}
	clk.add(30 * time.Second)
	if bad.Ejected() {
		t.Error("host not back after 2x base")
	}
}

func TestPanicThresholdAndGatewayEnforcement(t *testing.T) {
	od := &config.Outlier{Consecutive5xx: 1, EnforcingConsecutive5xx: 100, Interval: time.Second, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}
	m, _ := manager(t, &config.Cluster{Outlier: od}, endpoints(2))
	c := m.Cluster("c")
	for _, h := range c.Hosts() {
		h.Report(Error5xx)
	}
	// Both ejected: below the panic threshold the balancer uses them anyway.
	if _, err := c.Pick(nil); err != nil {
		t.Errorf("panic mode: %v", err)
	}
	// Gateway failures are not enforced by default (Envoy's 0%).
	od2 := &config.Outlier{Consecutive5xx: 100, EnforcingConsecutive5xx: 100, ConsecutiveGatewayFailure: 1, EnforcingConsecutiveGatewayFailure: 0,
		BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}
	m, _ = manager(t, &config.Cluster{Outlier: od2}, endpoints(2))
	h := m.Cluster("c").Hosts()[0]
	h.Report(GatewayFailure)
	if h.Ejected() {
		t.Error("gateway failure ejected with enforcing 0")
	}
}

func TestHostStateSurvivesUpdate(t *testing.T) {
	od := &config.Outlier{Consecutive5xx: 1, EnforcingConsecutive5xx: 100, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100}
	eps := endpoints(3)
	m, _ := manager(t, &config.Cluster{Outlier: od}, eps)
	c := m.Cluster("c")
	first := c.Hosts()[0]
	first.Report(Error5xx)
	cfg := &config.Cluster{Name: "c", ServiceName: "c", EDS: true, Outlier: od, HealthyPanicThreshold: 50}
	m.Update(&config.Snapshot{Clusters: map[string]*config.Cluster{"c": cfg}, Assignments: map[string][]config.Endpoint{"c": eps[:2]}})
	if m.Cluster("c") != c || len(c.Hosts()) != 2 || c.Hosts()[0] != first || !first.Ejected() {
		t.Error("host state lost across an update that keeps the host")
	}
	m.Update(&config.Snapshot{})
	if m.Cluster("c") != nil {
		t.Error("removed cluster still served")
	}
	if _, err := c.Pick(nil); err != ErrNoHealthyHost {
		t.Errorf("pick on a removed cluster: %v", err)
	}
}

func TestRetryBudget(t *testing.T) {
	m, _ := manager(t, &config.Cluster{MaxRetries: 2}, endpoints(1))
	c := m.Cluster("c")
	end1, ok1 := c.BeginRetry()
	end2, ok2 := c.BeginRetry()
	_, ok3 := c.BeginRetry()
	if !ok1 || !ok2 || ok3 {
		t.Fatalf("budget 2: got %v %v %v", ok1, ok2, ok3)
	}
	end1()
	if end, ok := c.BeginRetry(); !ok {
		t.Error("a finished retry did not free its slot")
	} else {
		end()
	}
	end2()
}
