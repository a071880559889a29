package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
)

func TestMain(m *testing.M) {
	slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	os.Exit(m.Run())
}

func workload(uid, node string) *workloadv1.Address {
	return &workloadv1.Address{Type: &workloadv1.Address_Workload{Workload: &workloadv1.Workload{
		Uid: uid, Name: uid, Namespace: "default", Node: node, ServiceAccount: "sa", TrustDomain: "cluster.local",
	}}}
}

// startServer runs the xDS server on a loopback gRPC port.
func startServer(t *testing.T, opts Options) (*Server, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s := New(ctx, opts)
	go s.Run(ctx)
	g := grpc.NewServer()
	s.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	t.Cleanup(g.Stop)
	return s, ln.Addr().String()
}

// recorder is a client-side view of the resources, counting updates.
type recorder struct {
	mu        sync.Mutex
	state     map[string]map[string]*discovery.Resource
	responses []string // "type: +names -names"
	upserts   int
}

func newRecorder() *recorder {
	return &recorder{state: map[string]map[string]*discovery.Resource{}}
}

func (r *recorder) handle(typeURL string, ups []*discovery.Resource, removed []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.state[typeURL]
	if m == nil {
		m = map[string]*discovery.Resource{}
		r.state[typeURL] = m
	}
	var names []string
	for _, u := range ups {
		m[u.GetName()] = u
		names = append(names, u.GetName())
	}
	for _, n := range removed {
		delete(m, n)
	}
	r.upserts += len(ups)
	r.responses = append(r.responses, fmt.Sprintf("%s +%v -%v", typeURL, names, removed))
	return nil
}

func (r *recorder) snapshot() (names map[string]int, upserts int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	names = map[string]int{}
	for typeURL, m := range r.state {
		names[typeURL] = len(m)
	}
	return names, r.upserts
}

func (r *recorder) workloadNode(uid string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := r.state[workloadv1.AddressTypeURL][uid]
	if res == nil {
		return ""
	}
	var a workloadv1.Address
	if err := res.GetResource().UnmarshalTo(&a); err != nil {
		return "unmarshal: " + err.Error()
	}
	return a.GetWorkload().GetNode()
}

func startClient(t *testing.T, addr string, rec *recorder) (*xdsclient.Client, context.CancelFunc) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := xdsclient.New(conn, xdsclient.Options{Node: &core.Node{Id: "ztunnel~node-a"}, TypeURLs: TypeURLs, Handler: rec.handle, MinBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return c, stop
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestInitialStateThenDeltas(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 10 * time.Millisecond})
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{
		"uid-1": workload("uid-1", "node-a"), "uid-2": workload("uid-2", "node-a"), "uid-3": workload("uid-3", "node-b"),
	}, nil))
	must(t, s.Enqueue(workloadv1.AuthorizationTypeURL, map[string]proto.Message{
		"default/deny-all": &workloadv1.Authorization{Name: "deny-all", Namespace: "default", Scope: workloadv1.AuthorizationScope_NAMESPACE, Action: workloadv1.AuthorizationAction_DENY},
	}, nil))
	s.Flush()

	rec := newRecorder()
	c, _ := startClient(t, addr, rec)
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("client never synced")
	}
	names, upserts := rec.snapshot()
	if names[workloadv1.AddressTypeURL] != 3 || names[workloadv1.AuthorizationTypeURL] != 1 || upserts != 4 {
		t.Fatalf("initial state: %v with %d upserts, want 3 addresses and 1 authorization", names, upserts)
	}

	// One pod moves: exactly that resource is sent.
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{"uid-2": workload("uid-2", "node-c")}, nil))
	eventually(t, "the changed workload", func() bool { return rec.workloadNode("uid-2") == "node-c" })
	if _, upserts := rec.snapshot(); upserts != 5 {
		t.Fatalf("one change sent %d resources in total so far, want 5 (4 initial + 1)", upserts)
	}

	// A removal is a removal, not a resend.
	must(t, s.Enqueue(workloadv1.AddressTypeURL, nil, []string{"uid-3"}))
	eventually(t, "the removal", func() bool { n, _ := rec.snapshot(); return n[workloadv1.AddressTypeURL] == 2 })
	if _, upserts := rec.snapshot(); upserts != 5 {
		t.Fatalf("a removal resent resources: %d upserts", upserts)
	}
	if s.Clients() != 1 {
		t.Fatalf("server counts %d clients, want 1", s.Clients())
	}
}

func TestReconnectResumesFromKnownVersions(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 10 * time.Millisecond})
	initial := map[string]proto.Message{}
	for i := range 50 {
		uid := fmt.Sprintf("uid-%d", i)
		initial[uid] = workload(uid, "node-a")
	}
	must(t, s.Enqueue(workloadv1.AddressTypeURL, initial, nil))
	s.Flush()

	rec := newRecorder()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	c, err := xdsclient.New(conn, xdsclient.Options{TypeURLs: TypeURLs, Handler: rec.handle, MinBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	<-c.Synced()
	cancel()
	<-done
	_, before := rec.snapshot()
	if before != 50 {
		t.Fatalf("initial upserts %d, want 50", before)
	}

	// While disconnected, one resource changes and one goes away.
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{"uid-7": workload("uid-7", "node-z")}, []string{"uid-9"}))
	s.Flush()

	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = c.Run(ctx) }()
	eventually(t, "the resumed stream to deliver the change", func() bool { return rec.workloadNode("uid-7") == "node-z" })
	eventually(t, "the removal on resume", func() bool { n, _ := rec.snapshot(); return n[workloadv1.AddressTypeURL] == 49 })
	if _, after := rec.snapshot(); after-before != 1 {
		t.Fatalf("reconnect resent %d resources, want only the 1 that changed", after-before)
	}
}

func TestBurstIsCoalesced(t *testing.T) {
	var mu sync.Mutex
	var pushes int
	s, addr := startServer(t, Options{Debounce: 50 * time.Millisecond, MaxDelay: 5 * time.Second, OnPush: func(PushStats) {
		mu.Lock()
		pushes++
		mu.Unlock()
	}})
	rec := newRecorder()
	c, _ := startClient(t, addr, rec)
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{"uid-0": workload("uid-0", "n0")}, nil))
	<-c.Synced()
	mu.Lock()
	pushes = 0
	mu.Unlock()
	for i := range 200 {
		must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{"uid-0": workload("uid-0", fmt.Sprintf("n%d", i))}, nil))
	}
	eventually(t, "the last value", func() bool { return rec.workloadNode("uid-0") == "n199" })
	mu.Lock()
	defer mu.Unlock()
	if pushes > 5 {
		t.Fatalf("200 back-to-back changes caused %d pushes; they should coalesce", pushes)
	}
}

// A client that stops reading must not hold up pushes to the others.
func TestStalledClientDoesNotBlockOthers(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 5 * time.Millisecond})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	stalled, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if err := stalled.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: workloadv1.AddressTypeURL, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	// It never calls Recv and never ACKs.
	rec := newRecorder()
	startClient(t, addr, rec)
	big := make([]byte, 64<<10)
	for round := range 100 {
		ups := map[string]proto.Message{}
		for i := range 10 {
			w := workload(fmt.Sprintf("uid-%d", i), fmt.Sprintf("n%d", round))
			w.GetWorkload().CanonicalName = string(big)
			ups[fmt.Sprintf("uid-%d", i)] = w
		}
		must(t, s.Enqueue(workloadv1.AddressTypeURL, ups, nil))
		s.Flush()
	}
	eventually(t, "the healthy client to see the last round", func() bool { return rec.workloadNode("uid-3") == "n99" })
}

func TestEnqueueRejectsUnknownType(t *testing.T) {
	s := New(context.Background(), Options{})
	if err := s.Enqueue("type.googleapis.com/nope", map[string]proto.Message{"a": workload("a", "n")}, nil); err == nil {
		t.Fatal("unknown type accepted")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
