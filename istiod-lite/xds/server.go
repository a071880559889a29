// Package xds serves ambit's workload discovery resources (Address,
// Authorization) to ztunnels over delta (incremental) ADS, using
// go-control-plane's server and per-type linear caches.
//
// Producers (the Kubernetes translation) hand changes to Enqueue, which never
// blocks; a debounce loop coalesces bursts and applies them to the caches,
// from which go-control-plane sends each subscribed client only the
// resources that changed.
//
// Clients are identified by the node their credential is bound to
// (Options.Authenticate), never by the node id they claim. For the types a
// NodeScope names, each node's clients are served from a cache of their
// own holding only what that node needs (scope.go).
package xds

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// TypeURLs are the resource types this server serves.
var TypeURLs = []string{workloadv1.AddressTypeURL, workloadv1.AuthorizationTypeURL}

// Options tune a Server. Zero values take the defaults.
type Options struct {
	// Debounce is the quiet period after a change before it is pushed; default 100ms.
	Debounce time.Duration
	// MaxDelay bounds how long a change may wait during a continuous burst; default 1s.
	MaxDelay time.Duration
	// OnPush, if set, observes each applied batch (for metrics).
	OnPush func(PushStats)
	Logger *slog.Logger
	// Authenticate, if set, authenticates each stream from its context
	// (gRPC metadata) and returns the node the caller is bound to, or ""
	// for a caller bound to no node. An error refuses the stream; return a
	// gRPC status error to choose its code. The node replaces whatever node
	// id the client sends. Nil accepts every stream as bound to no node.
	Authenticate func(ctx context.Context) (node string, err error)
	// NodeScope, if set, narrows what node-bound clients receive.
	NodeScope *NodeScope
}

// PushStats describes one applied batch of changes.
type PushStats struct {
	Upserts, Deletes int
	// Wait is how long the oldest change in the batch waited before it was applied.
	Wait time.Duration
}

// Server is the delta ADS server.
type Server struct {
	opts   Options
	log    *slog.Logger
	caches map[string]*cache.LinearCache
	// envoy holds each waypoint's Envoy resources, keyed by its node.
	envoy cache.SnapshotCache
	xds   serverv3.Server

	// applyMu serialises applying batches with creating node caches, so a
	// node cache starts from a consistent view.
	applyMu    sync.Mutex
	nodeCaches map[nodeKey]*cache.LinearCache
	streams    sync.Map // stream id -> bound node

	mu      sync.Mutex
	pending map[string]*pendingChanges // by type URL
	since   time.Time                  // when the oldest pending change arrived
	kick    chan struct{}

	clients atomic.Int64
}

type pendingChanges struct {
	upserts map[string]types.Resource
	deletes map[string]struct{}
}

// New returns a Server with empty caches. ctx bounds the go-control-plane server.
func New(ctx context.Context, opts Options) *Server {
	if opts.Debounce <= 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.MaxDelay < opts.Debounce {
		opts.MaxDelay = max(time.Second, opts.Debounce)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	s := &Server{
		opts:    opts,
		log:     opts.Logger.With("component", "xds"),
		caches:  map[string]*cache.LinearCache{},
		pending: map[string]*pendingChanges{},
		kick:    make(chan struct{}, 1),

		nodeCaches: map[nodeKey]*cache.LinearCache{},
		envoy:      cache.NewSnapshotCache(false, cache.IDHash{}, nil),
	}
	for _, typeURL := range TypeURLs {
		s.caches[typeURL] = cache.NewLinearCache(typeURL)
	}
	s.xds = serverv3.NewServer(ctx, &router{s: s}, serverv3.CallbackFuncs{
		// Only delta streams are authenticated and bound to a node, so
		// state-of-the-world streams are refused outright.
		StreamOpenFunc: func(context.Context, int64, string) error {
			return status.Error(codes.Unimplemented, "only delta (incremental) ADS is served")
		},
		DeltaStreamOpenFunc: func(ctx context.Context, id int64, typeURL string) error {
			node := ""
			if s.opts.Authenticate != nil {
				n, err := s.opts.Authenticate(ctx)
				if err != nil {
					s.log.Warn("xDS stream refused", "stream", id, "error", err)
					return err
				}
				node = n
			}
			s.streams.Store(id, node)
			s.clients.Add(1)
			s.log.Debug("delta stream opened", "stream", id, "node", node)
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, node *core.Node) {
			if _, ok := s.streams.LoadAndDelete(id); ok {
				s.clients.Add(-1)
			}
			s.log.Debug("delta stream closed", "stream", id, "node", node.GetId())
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			// The node is the one the credential is bound to, whatever the
			// client claims: it decides what the client may see.
			bound, _ := s.streams.Load(id)
			node, _ := bound.(string)
			if _, ok := s.caches[req.GetTypeUrl()]; !ok {
				if !isEnvoyType(req.GetTypeUrl()) {
					return fmt.Errorf("xds: type %q is not served here", req.GetTypeUrl())
				}
				if !IsWaypointNode(node) {
					return status.Errorf(codes.PermissionDenied, "xds: type %q is served to waypoints only", req.GetTypeUrl())
				}
			}
			if req.Node == nil || req.Node.GetId() != node {
				n := &core.Node{Id: node}
				if req.Node != nil {
					n.Cluster, n.Metadata = req.Node.GetCluster(), req.Node.GetMetadata()
				}
				req.Node = n
			}
			if d := req.GetErrorDetail(); d != nil {
				s.log.Warn("client rejected an update", "stream", id, "node", req.GetNode().GetId(), "type", req.GetTypeUrl(), "error", d.GetMessage())
			}
			return nil
		},
	})
	return s
}

// Register adds the ADS service to a gRPC server.
func (s *Server) Register(g grpc.ServiceRegistrar) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, s.xds)
}

// Clients is the number of open delta streams.
func (s *Server) Clients() int64 { return s.clients.Load() }

// Enqueue records changes for typeURL; they are applied after the debounce.
// It never blocks on clients. A name both upserted and deleted in one batch
// takes the last operation.
func (s *Server) Enqueue(typeURL string, upserts map[string]proto.Message, deletes []string) error {
	if _, ok := s.caches[typeURL]; !ok {
		return fmt.Errorf("xds: unknown type %q", typeURL)
	}
	if len(upserts) == 0 && len(deletes) == 0 {
		return nil
	}
	s.mu.Lock()
	p := s.pending[typeURL]
	if p == nil {
		p = &pendingChanges{upserts: map[string]types.Resource{}, deletes: map[string]struct{}{}}
		s.pending[typeURL] = p
	}
	for _, name := range deletes {
		delete(p.upserts, name)
		p.deletes[name] = struct{}{}
	}
	for name, res := range upserts {
		delete(p.deletes, name)
		p.upserts[name] = res
	}
	if s.since.IsZero() {
		s.since = time.Now()
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return nil
}

// Run applies enqueued changes until ctx is done: after Debounce without new
// changes, or MaxDelay after the oldest pending one, whichever comes first.
func (s *Server) Run(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-s.kick:
			s.mu.Lock()
			wait := min(s.opts.Debounce, s.opts.MaxDelay-time.Since(s.since))
			s.mu.Unlock()
			timer.Reset(max(wait, 0))
		case <-timer.C:
			s.Flush()
		}
	}
}

// Flush applies every pending change now.
func (s *Server) Flush() {
	s.mu.Lock()
	pending, since := s.pending, s.since
	s.pending, s.since = map[string]*pendingChanges{}, time.Time{}
	s.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	stats := PushStats{Wait: time.Since(since)}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	for typeURL, p := range pending {
		deletes := make([]string, 0, len(p.deletes))
		for name := range p.deletes {
			deletes = append(deletes, name)
		}
		if err := s.caches[typeURL].UpdateResources(p.upserts, deletes); err != nil {
			s.log.Error("applying changes to the xDS cache failed", "type", typeURL, "err", err)
			continue
		}
		stats.Upserts += len(p.upserts)
		stats.Deletes += len(deletes)
	}
	s.rescopeLocked()
	s.log.Debug("pushed changes", "upserts", stats.Upserts, "deletes", stats.Deletes, "wait", stats.Wait)
	if s.opts.OnPush != nil {
		s.opts.OnPush(stats)
	}
}

// Resources returns the current resources of typeURL, for debug views.
func (s *Server) Resources(typeURL string) map[string]types.Resource {
	c, ok := s.caches[typeURL]
	if !ok {
		return nil
	}
	return c.GetResources()
}
