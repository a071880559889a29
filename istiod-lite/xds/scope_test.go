package xds

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
)

// nodeCreds sends the test's stand-in for a credential bound to a node.
type nodeCreds string

func (c nodeCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"x-test-node": string(c)}, nil
}
func (nodeCreds) RequireTransportSecurity() bool { return false }

func authenticateTestNode(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get("x-test-node")
	if len(v) != 1 || v[0] == "forbidden" {
		return "", status.Error(codes.Unauthenticated, "no valid test credential")
	}
	if v[0] == "-" {
		return "", nil // authenticated, bound to no node
	}
	return v[0], nil
}

// testScope admits a namespace-scoped authorization for a node when a
// workload of that namespace runs on it: the shape of the real scope.
var testScope = &NodeScope{
	Types: []string{workloadv1.AuthorizationTypeURL},
	Select: func(resources func(string) map[string]types.Resource) func(node, typeURL, name string) bool {
		nodeNamespaces := map[string]map[string]bool{}
		for _, r := range resources(workloadv1.AddressTypeURL) {
			w := r.(*workloadv1.Address).GetWorkload()
			if nodeNamespaces[w.GetNode()] == nil {
				nodeNamespaces[w.GetNode()] = map[string]bool{}
			}
			nodeNamespaces[w.GetNode()][w.GetNamespace()] = true
		}
		return func(node, typeURL, name string) bool {
			ns, _, _ := strings.Cut(name, "/")
			return nodeNamespaces[node][ns]
		}
	},
}

func workloadIn(uid, ns, node string) *workloadv1.Address {
	a := workload(uid, node)
	a.GetWorkload().Namespace = ns
	return a
}

func policy(ns, name string) *workloadv1.Authorization {
	return &workloadv1.Authorization{Name: name, Namespace: ns, Scope: workloadv1.AuthorizationScope_NAMESPACE, Action: workloadv1.AuthorizationAction_DENY}
}

func startBoundClient(t *testing.T, addr, cred, claimedNode string, rec *recorder) *xdsclient.Client {
	t.Helper()
	return startBoundClientFor(t, addr, cred, claimedNode, TypeURLs, rec)
}

func startBoundClientFor(t *testing.T, addr, cred, claimedNode string, typeURLs []string, rec *recorder) *xdsclient.Client {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(nodeCreds(cred)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := xdsclient.New(conn, xdsclient.Options{Node: &core.Node{Id: claimedNode}, TypeURLs: typeURLs, Handler: rec.handle, MinBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func (r *recorder) names(typeURL string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for n := range r.state[typeURL] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func waitSynced(t *testing.T, c *xdsclient.Client) {
	t.Helper()
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("client never synced")
	}
}

func TestNodeScopedTypes(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 10 * time.Millisecond, Authenticate: authenticateTestNode, NodeScope: testScope})
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{
		"a1": workloadIn("a1", "shop", "node-a"), "b1": workloadIn("b1", "bank", "node-b"),
	}, nil))
	must(t, s.Enqueue(workloadv1.AuthorizationTypeURL, map[string]proto.Message{
		"shop/deny": policy("shop", "deny"), "bank/deny": policy("bank", "deny"),
	}, nil))
	s.Flush()

	// Client A claims to be node-b; its credential says node-a, which wins.
	recA, recB, recAll := newRecorder(), newRecorder(), newRecorder()
	waitSynced(t, startBoundClient(t, addr, "node-a", "node-b", recA))
	waitSynced(t, startBoundClient(t, addr, "node-b", "node-b", recB))
	waitSynced(t, startBoundClient(t, addr, "-", "", recAll))

	eq := func(what string, got []string, want ...string) {
		t.Helper()
		if strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("%s: got %v, want %v", what, got, want)
		}
	}
	// Every client gets every address (any pod may be a destination).
	eq("A addresses", recA.names(workloadv1.AddressTypeURL), "a1", "b1")
	eq("B addresses", recB.names(workloadv1.AddressTypeURL), "a1", "b1")
	eq("A policies", recA.names(workloadv1.AuthorizationTypeURL), "shop/deny")
	eq("B policies", recB.names(workloadv1.AuthorizationTypeURL), "bank/deny")
	eq("unbound policies", recAll.names(workloadv1.AuthorizationTypeURL), "bank/deny", "shop/deny")

	// A shop pod lands on node-b: B gains the shop policy, A is untouched.
	_, upsertsA := recA.snapshot()
	must(t, s.Enqueue(workloadv1.AddressTypeURL, map[string]proto.Message{"b2": workloadIn("b2", "shop", "node-b")}, nil))
	eventually(t, "B receives the shop policy", func() bool { return len(recB.names(workloadv1.AuthorizationTypeURL)) == 2 })
	eventually(t, "A receives the new address", func() bool { return len(recA.names(workloadv1.AddressTypeURL)) == 3 })
	if _, n := recA.snapshot(); n != upsertsA+1 {
		t.Errorf("A received %d resources for one new address, want 1", n-upsertsA)
	}

	// A policy change reaches only the nodes it concerns.
	_, upsertsA = recA.snapshot()
	_, upsertsB := recB.snapshot()
	changed := policy("bank", "deny")
	changed.Action = workloadv1.AuthorizationAction_ALLOW
	must(t, s.Enqueue(workloadv1.AuthorizationTypeURL, map[string]proto.Message{"bank/deny": changed}, nil))
	eventually(t, "B receives the changed bank policy", func() bool { _, n := recB.snapshot(); return n == upsertsB+1 })
	s.Flush()
	time.Sleep(100 * time.Millisecond)
	if _, n := recA.snapshot(); n != upsertsA {
		t.Errorf("A received %d resources for a policy of a namespace it has no pods of", n-upsertsA)
	}

	// The shop pod leaves node-b: B loses the shop policy.
	must(t, s.Enqueue(workloadv1.AddressTypeURL, nil, []string{"b2"}))
	eventually(t, "B loses the shop policy", func() bool {
		return strings.Join(recB.names(workloadv1.AuthorizationTypeURL), ",") == "bank/deny"
	})
	eq("A policies at the end", recA.names(workloadv1.AuthorizationTypeURL), "shop/deny")
	if got := len(s.NodeResources(workloadv1.AuthorizationTypeURL, "node-a")); got != 1 {
		t.Errorf("debug view of node-a has %d policies, want 1", got)
	}
}

func TestUnauthenticatedStreamRefused(t *testing.T) {
	s, addr := startServer(t, Options{Debounce: 10 * time.Millisecond, Authenticate: authenticateTestNode})
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithPerRPCCredentials(nodeCreds("forbidden")))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	c, err := xdsclient.New(conn, xdsclient.Options{Node: &core.Node{Id: "x"}, TypeURLs: TypeURLs, Handler: newRecorder().handle, MinBackoff: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = c.Run(ctx) }()
	select {
	case <-c.Synced():
		t.Fatal("an unauthenticated client synced")
	case <-ctx.Done():
	}
	if s.Clients() != 0 {
		t.Errorf("server counts %d clients after refusing every stream", s.Clients())
	}
}
