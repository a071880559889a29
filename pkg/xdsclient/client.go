// Package xdsclient is a delta (incremental) ADS client: it subscribes to a
// set of resource types on one stream, hands every update to a handler,
// ACKs or NACKs it, and reconnects with backoff, resuming from the resource
// versions it already has so a reconnect resends only what changed.
// ztunnel and the waypoint use it; the handler keeps the last good config,
// so a control plane outage changes nothing until it comes back.
package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
)

// Handler applies one response: upserted resources and removed names of one
// type. A non-nil error NACKs the response; the handler must then keep its
// previous state for that type.
type Handler func(typeURL string, upserts []*discovery.Resource, removed []string) error

// Options configure a Client.
type Options struct {
	Node       *core.Node
	TypeURLs   []string
	Handler    Handler
	MinBackoff time.Duration // default 500ms
	MaxBackoff time.Duration // default 30s
	Logger     *slog.Logger
}

// Client is a delta ADS client over one gRPC connection.
type Client struct {
	conn grpc.ClientConnInterface
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	versions  map[string]map[string]string // type URL -> name -> version we hold
	gotType   map[string]bool
	synced    chan struct{}
	connected bool
}

// New returns a client using conn (whose credentials carry authentication).
func New(conn grpc.ClientConnInterface, opts Options) (*Client, error) {
	if opts.Handler == nil || len(opts.TypeURLs) == 0 {
		return nil, errors.New("xdsclient: a handler and at least one type URL are required")
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 500 * time.Millisecond
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = max(30*time.Second, opts.MinBackoff)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Client{conn: conn, opts: opts, log: opts.Logger.With("component", "xds-client"),
		versions: map[string]map[string]string{}, gotType: map[string]bool{}, synced: make(chan struct{})}
	for _, t := range opts.TypeURLs {
		c.versions[t] = map[string]string{}
	}
	return c, nil
}

// Synced is closed once every subscribed type has had its first response.
func (c *Client) Synced() <-chan struct{} { return c.synced }

// Connected reports whether a stream is currently established.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// Run keeps a stream open until ctx is done, reconnecting with exponential
// backoff (reset after a stream that delivered at least one response).
func (c *Client) Run(ctx context.Context) error {
	backoff := c.opts.MinBackoff
	for {
		delivered, err := c.stream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if delivered {
			backoff = c.opts.MinBackoff
		}
		// Jitter (±20%) spreads the reconnects of many clients after a
		// control plane restart.
		wait := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		c.log.Warn("xDS stream ended; reconnecting", "err", err, "in", wait)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.opts.MaxBackoff)
	}
}

func (c *Client) stream(ctx context.Context) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st, err := discovery.NewAggregatedDiscoveryServiceClient(c.conn).DeltaAggregatedResources(ctx)
	if err != nil {
		return false, fmt.Errorf("open stream: %w", err)
	}
	c.setConnected(true)
	defer c.setConnected(false)
	for i, typeURL := range c.opts.TypeURLs {
		req := &discovery.DeltaDiscoveryRequest{
			TypeUrl:                 typeURL,
			ResourceNamesSubscribe:  []string{"*"},
			InitialResourceVersions: c.knownVersions(typeURL),
		}
		if i == 0 {
			req.Node = c.opts.Node
		}
		if err := st.Send(req); err != nil {
			return false, fmt.Errorf("subscribe %s: %w", typeURL, err)
		}
	}
	for {
		resp, err := st.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("server closed the stream")
			}
			return delivered, err
		}
		delivered = true
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if herr := c.apply(resp); herr != nil {
			c.log.Warn("rejecting xDS update", "type", resp.GetTypeUrl(), "err", herr)
			ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: herr.Error()}
		}
		if err := st.Send(ack); err != nil {
			return delivered, fmt.Errorf("ack: %w", err)
		}
	}
}

func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	typeURL := resp.GetTypeUrl()
	c.mu.Lock()
	known, ok := c.versions[typeURL]
	c.mu.Unlock()
	if !ok {
		return fmt.Errorf("unsubscribed type %q", typeURL)
	}
	if err := c.opts.Handler(typeURL, resp.GetResources(), resp.GetRemovedResources()); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, r := range resp.GetResources() {
		known[r.GetName()] = r.GetVersion()
	}
	for _, name := range resp.GetRemovedResources() {
		delete(known, name)
	}
	if !c.gotType[typeURL] {
		c.gotType[typeURL] = true
		if len(c.gotType) == len(c.opts.TypeURLs) {
			close(c.synced)
		}
	}
	return nil
}

func (c *Client) knownVersions(typeURL string) map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]string, len(c.versions[typeURL]))
	for k, v := range c.versions[typeURL] {
		out[k] = v
	}
	return out
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.connected = v
	c.mu.Unlock()
}
