package xds

import (
	"context"
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
)

// NodeScope narrows what clients bound to a node receive of some types:
// each node gets a cache of its own for them, kept equal to the subset of
// the full resources that Select admits, and recomputed after every applied
// batch. Clients bound to no node get the full set.
//
// Versions are content hashes, the same in every cache, so a client that
// reconnects resumes from what it has wherever it was served from.
type NodeScope struct {
	// Types are the scoped type URLs.
	Types []string
	// Select is called once per applied batch (and when a node first
	// subscribes) with the current full resources of every type; the
	// returned predicate admits resource name of typeURL for node. It runs
	// with batches held back, so it must be quick.
	Select func(resources func(typeURL string) map[string]types.Resource) func(node, typeURL, name string) bool
}

func (n *NodeScope) scopes(typeURL string) bool {
	if n == nil {
		return false
	}
	for _, t := range n.Types {
		if t == typeURL {
			return true
		}
	}
	return false
}

type nodeKey struct{ typeURL, node string }

// router sends each watch to the full cache of its type or, for a scoped
// type and a node-bound client, to that node's cache.
type router struct{ s *Server }

var _ cache.Cache = (*router)(nil)

func (r *router) CreateWatch(req *cache.Request, sub cache.Subscription, ch chan cache.Response) (func(), error) {
	if isEnvoyType(req.GetTypeUrl()) {
		return nil, fmt.Errorf("xds: type %q is served over delta ADS only", req.GetTypeUrl())
	}
	c, err := r.s.cacheFor(req.GetTypeUrl(), req.GetNode().GetId())
	if err != nil {
		return nil, err
	}
	return c.CreateWatch(req, sub, ch)
}

func (r *router) CreateDeltaWatch(req *cache.DeltaRequest, sub cache.Subscription, ch chan cache.DeltaResponse) (func(), error) {
	if isEnvoyType(req.GetTypeUrl()) {
		// The node is the stream's bound one (StreamDeltaRequestFunc).
		return r.s.envoy.CreateDeltaWatch(req, sub, ch)
	}
	c, err := r.s.cacheFor(req.GetTypeUrl(), req.GetNode().GetId())
	if err != nil {
		return nil, err
	}
	return c.CreateDeltaWatch(req, sub, ch)
}

func (r *router) Fetch(ctx context.Context, req *cache.Request) (cache.Response, error) {
	return nil, fmt.Errorf("xds: fetch is not supported")
}

func (s *Server) cacheFor(typeURL, node string) (*cache.LinearCache, error) {
	full, ok := s.caches[typeURL]
	if !ok {
		return nil, fmt.Errorf("xds: type %q is not served here", typeURL)
	}
	if node == "" || !s.opts.NodeScope.scopes(typeURL) {
		return full, nil
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	key := nodeKey{typeURL, node}
	if c, ok := s.nodeCaches[key]; ok {
		return c, nil
	}
	sel := s.opts.NodeScope.Select(s.fullResources)
	c := cache.NewLinearCache(typeURL, cache.WithInitialResources(selectFor(full.GetResources(), sel, node, typeURL)))
	s.nodeCaches[key] = c
	return c, nil
}

func (s *Server) fullResources(typeURL string) map[string]types.Resource {
	if c, ok := s.caches[typeURL]; ok {
		return c.GetResources()
	}
	return nil
}

func selectFor(all map[string]types.Resource, sel func(node, typeURL, name string) bool, node, typeURL string) map[string]types.Resource {
	out := make(map[string]types.Resource)
	for name, res := range all {
		if sel(node, typeURL, name) {
			out[name] = res
		}
	}
	return out
}

// rescopeLocked brings every node cache to its current selection. Caller
// holds applyMu. Node caches live as long as the server: a node's ztunnel
// reconnecting after a restart resumes from its cache.
func (s *Server) rescopeLocked() {
	if s.opts.NodeScope == nil || len(s.nodeCaches) == 0 {
		return
	}
	sel := s.opts.NodeScope.Select(s.fullResources)
	full := map[string]map[string]types.Resource{}
	for key, c := range s.nodeCaches {
		all, ok := full[key.typeURL]
		if !ok {
			all = s.fullResources(key.typeURL)
			full[key.typeURL] = all
		}
		want := selectFor(all, sel, key.node, key.typeURL)
		have := c.GetResources()
		upserts := map[string]types.Resource{}
		for name, res := range want {
			if cur, ok := have[name]; !ok || cur != res {
				upserts[name] = res
			}
		}
		var deletes []string
		for name := range have {
			if _, ok := want[name]; !ok {
				deletes = append(deletes, name)
			}
		}
		if len(upserts) == 0 && len(deletes) == 0 {
			continue
		}
		if err := c.UpdateResources(upserts, deletes); err != nil {
			s.log.Error("applying changes to a node's xDS cache failed", "type", key.typeURL, "node", key.node, "err", err)
		}
	}
}

// NodeResources returns what node's clients get of typeURL, for debug
// views.
func (s *Server) NodeResources(typeURL, node string) map[string]types.Resource {
	full, ok := s.caches[typeURL]
	if !ok {
		return nil
	}
	if node == "" || !s.opts.NodeScope.scopes(typeURL) {
		return full.GetResources()
	}
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	if c, ok := s.nodeCaches[nodeKey{typeURL, node}]; ok {
		return c.GetResources()
	}
	return selectFor(full.GetResources(), s.opts.NodeScope.Select(s.fullResources), node, typeURL)
}
