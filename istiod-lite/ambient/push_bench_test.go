package ambient

import (
	"context"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
)

// pushRig is the translation feeding a real xDS server on loopback gRPC,
// with one delta client counting what it receives.
type pushRig struct {
	ix       *Index
	server   *xds.Server
	addr     string
	received atomic.Int64
	got      chan struct{}
	want     atomic.Int64
	stop     func()
}

func enqueueChanges(s *xds.Server, c Changes) {
	ups := make(map[string]proto.Message, len(c.Addresses))
	for k, v := range c.Addresses {
		ups[k] = v
	}
	_ = s.Enqueue(workloadv1.AddressTypeURL, ups, c.RemovedAddresses)
	aups := make(map[string]proto.Message, len(c.Authorizations))
	for k, v := range c.Authorizations {
		aups[k] = v
	}
	_ = s.Enqueue(workloadv1.AuthorizationTypeURL, aups, c.RemovedAuthorizations)
}

func newPushRig(b *testing.B, ix *Index) *pushRig {
	ctx, cancel := context.WithCancel(context.Background())
	quiet := slog.New(slog.DiscardHandler)
	s := xds.New(ctx, xds.Options{Debounce: time.Millisecond, Logger: quiet})
	go s.Run(ctx)
	g := grpc.NewServer()
	s.Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	r := &pushRig{ix: ix, server: s, addr: ln.Addr().String(), got: make(chan struct{}, 1)}
	r.stop = func() { g.Stop(); cancel() }
	return r
}

// connect starts a client and returns when it has want resources.
func (r *pushRig) connect(b *testing.B, want int64) func() {
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		b.Fatal(err)
	}
	r.want.Store(want)
	r.received.Store(0)
	c, err := xdsclient.New(conn, xdsclient.Options{
		Node: &core.Node{Id: "bench"}, TypeURLs: xds.TypeURLs, Logger: slog.New(slog.DiscardHandler),
		Handler: func(_ string, ups []*discovery.Resource, _ []string) error {
			if r.received.Add(int64(len(ups))) >= r.want.Load() {
				select {
				case r.got <- struct{}{}:
				default:
				}
			}
			return nil
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = c.Run(ctx) })
	r.wait(b)
	return func() { cancel(); wg.Wait(); conn.Close() }
}

func (r *pushRig) wait(b *testing.B) {
	select {
	case <-r.got:
	case <-time.After(60 * time.Second):
		b.Fatalf("client received %d of %d resources", r.received.Load(), r.want.Load())
	}
}

// BenchmarkFullPush is the cold start at scale: translate 1,000 Services /
// 10,000 pods, load the xDS caches, and deliver everything to a freshly
// connected delta client over loopback gRPC. The baseline in the same run
// is proto-marshalling the same resources once (the least any push does).
func BenchmarkFullPush(b *testing.B) {
	w := newBenchWorld()
	var marshal, build, push time.Duration
	var resources int
	var heapMiB float64
	for b.Loop() {
		runtime.GC()
		var m0 runtime.MemStats
		runtime.ReadMemStats(&m0)

		t0 := time.Now()
		ix := w.build(b)
		snap := ix.Snapshot()
		t1 := time.Now()
		rig := newPushRig(b, ix)
		enqueueChanges(rig.server, snap)
		rig.server.Flush()
		resources = len(snap.Addresses) + len(snap.Authorizations)
		done := rig.connect(b, int64(resources))
		t2 := time.Now()

		runtime.GC()
		var m1 runtime.MemStats
		runtime.ReadMemStats(&m1)
		heapMiB = float64(m1.HeapAlloc-min(m0.HeapAlloc, m1.HeapAlloc)) / (1 << 20)

		t3 := time.Now()
		for _, a := range snap.Addresses {
			if _, err := proto.Marshal(a); err != nil {
				b.Fatal(err)
			}
		}
		marshal += time.Since(t3)
		build += t1.Sub(t0)
		push += t2.Sub(t1)
		done()
		rig.stop()
		runtime.KeepAlive(ix)
	}
	n := float64(b.N)
	b.ReportMetric(float64(resources), "resources")
	b.ReportMetric(build.Seconds()*1000/n, "build-ms")
	b.ReportMetric(push.Seconds()*1000/n, "push-ms")
	b.ReportMetric(marshal.Seconds()*1000/n, "baseline-marshal-ms")
	b.ReportMetric(push.Seconds()/marshal.Seconds(), "push/marshal")
	b.ReportMetric(heapMiB, "heap-MiB")
}

// BenchmarkPodChangePush is one pod's readiness flip in the 10,000-pod
// mesh, from the informer event to the connected client holding it
// (debounce excluded: the batch is flushed at once).
func BenchmarkPodChangePush(b *testing.B) {
	w := newBenchWorld()
	ix := w.build(b)
	rig := newPushRig(b, ix)
	defer rig.stop()
	snap := ix.Snapshot()
	enqueueChanges(rig.server, snap)
	rig.server.Flush()
	done := rig.connect(b, int64(len(snap.Addresses)+len(snap.Authorizations)))
	defer done()

	ready := w.pods[4242]
	unready := ready.DeepCopy()
	notReady(unready)
	i := 0
	for b.Loop() {
		p := unready
		if i%2 == 1 {
			p = ready
		}
		i++
		rig.want.Store(1)
		rig.received.Store(0)
		enqueueChanges(rig.server, ix.UpsertPod(p))
		rig.server.Flush()
		rig.wait(b)
	}
}
