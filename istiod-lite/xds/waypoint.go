package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
)

// EnvoyTypeURLs are the Envoy resource types served to waypoints, each
// waypoint from a snapshot of its own (docs/waypoint.md, "Waypoint xDS").
var EnvoyTypeURLs = []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType}

// waypointNodePrefix starts the node a waypoint's stream is bound to.
// Kubernetes node names cannot contain "/", so it never collides with a
// ztunnel's node.
const waypointNodePrefix = "waypoint/"

// WaypointNode is the node a stream authenticated as ServiceAccount
// namespace/serviceAccount is bound to: the waypoint Gateway of that name
// (a waypoint's ServiceAccount is named after its Gateway).
func WaypointNode(namespace, serviceAccount string) string {
	return waypointNodePrefix + namespace + "/" + serviceAccount
}

// IsWaypointNode reports whether node is a WaypointNode.
func IsWaypointNode(node string) bool { return strings.HasPrefix(node, waypointNodePrefix) }

func isEnvoyType(typeURL string) bool { return slices.Contains(EnvoyTypeURLs, typeURL) }

// Resources are a waypoint's complete configuration: type URL -> name ->
// resource.
type Resources map[string]map[string]proto.Message

// SetWaypoint replaces what the waypoint node is served. Each type's
// version is a hash of its content, so setting an unchanged configuration
// pushes nothing and a restarted istiod-lite resumes where clients are.
func (s *Server) SetWaypoint(ctx context.Context, node string, res Resources) error {
	if !IsWaypointNode(node) {
		return fmt.Errorf("xds: %q is not a waypoint node", node)
	}
	for typeURL := range res {
		if !isEnvoyType(typeURL) {
			return fmt.Errorf("xds: waypoint %s: type %q is not served to waypoints", node, typeURL)
		}
	}
	byType := map[resource.Type][]types.Resource{}
	h := sha256.New()
	for _, typeURL := range EnvoyTypeURLs {
		names := make([]string, 0, len(res[typeURL]))
		for name := range res[typeURL] {
			names = append(names, name)
		}
		slices.Sort(names)
		list := make([]types.Resource, 0, len(names))
		for _, name := range names {
			m := res[typeURL][name]
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				return fmt.Errorf("xds: waypoint %s: marshal %s %q: %w", node, typeURL, name, err)
			}
			fmt.Fprintf(h, "%s\x00%s\x00%d\x00", typeURL, name, len(b))
			h.Write(b)
			list = append(list, m.(types.Resource))
		}
		byType[typeURL] = list
	}
	version := hex.EncodeToString(h.Sum(nil)[:12])
	if cur, err := s.envoy.GetSnapshot(node); err == nil && cur.GetVersion(resource.ListenerType) == version {
		return nil
	}
	snap, err := cache.NewSnapshot(version, byType)
	if err != nil {
		return fmt.Errorf("xds: waypoint %s: %w", node, err)
	}
	if err := s.envoy.SetSnapshot(ctx, node, snap); err != nil {
		return fmt.Errorf("xds: waypoint %s: %w", node, err)
	}
	s.log.Debug("waypoint configuration set", "node", node, "version", version)
	return nil
}

// DeleteWaypoint forgets a waypoint's configuration.
func (s *Server) DeleteWaypoint(node string) { s.envoy.ClearSnapshot(node) }

// WaypointResources returns what a waypoint node is served (for debug
// views and tests); nil when it has no configuration.
func (s *Server) WaypointResources(node string) map[string]map[string]types.Resource {
	snap, err := s.envoy.GetSnapshot(node)
	if err != nil {
		return nil
	}
	out := map[string]map[string]types.Resource{}
	for _, typeURL := range EnvoyTypeURLs {
		out[typeURL] = snap.GetResources(typeURL)
	}
	return out
}
