// Package debug serves istiod-lite's view of the mesh as JSON: the
// workloads, services and authorizations it pushes, optionally as one
// node's ztunnel receives them, and the policies it could not apply. The
// CLI's status and debug views read it.
package debug

import (
	"encoding/json"
	"net/http"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// Source is what the view is read from; *xds.Server is one.
type Source interface {
	Clients() int64
	NodeResources(typeURL, node string) map[string]types.Resource
}

// PolicyProblems lists the policies that were not applied as written.
type PolicyProblems func() []PolicyProblem

// PolicyProblem is one policy's unfavourable outcome.
type PolicyProblem struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Reason    string `json:"reason"`
	Message   string `json:"message"`
}

// View is the JSON document.
type View struct {
	Node           string            `json:"node,omitempty"`
	Clients        int64             `json:"connectedClients"`
	Workloads      []json.RawMessage `json:"workloads"`
	Services       []json.RawMessage `json:"services"`
	Authorizations []json.RawMessage `json:"authorizations"`
	Policies       []PolicyProblem   `json:"policyProblems"`
}

// Handler serves GET /debug/ambient[?node=<name>] (a node's view narrows
// authorizations to what that node's ztunnel receives).
func Handler(src Source, problems PolicyProblems) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "GET only", http.StatusMethodNotAllowed)
			return
		}
		node := r.URL.Query().Get("node")
		v := View{Node: node, Clients: src.Clients(), Workloads: []json.RawMessage{}, Services: []json.RawMessage{}, Authorizations: []json.RawMessage{}, Policies: []PolicyProblem{}}
		addrs := src.NodeResources(workloadv1.AddressTypeURL, node)
		for _, name := range sortedNames(addrs) {
			a, ok := addrs[name].(*workloadv1.Address)
			if !ok {
				continue
			}
			if wl := a.GetWorkload(); wl != nil {
				v.Workloads = append(v.Workloads, marshal(wl))
			} else if svc := a.GetService(); svc != nil {
				v.Services = append(v.Services, marshal(svc))
			}
		}
		auths := src.NodeResources(workloadv1.AuthorizationTypeURL, node)
		for _, name := range sortedNames(auths) {
			if m, ok := auths[name].(proto.Message); ok {
				v.Authorizations = append(v.Authorizations, marshal(m))
			}
		}
		if problems != nil {
			v.Policies = append(v.Policies, problems()...)
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	})
}

func sortedNames(m map[string]types.Resource) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func marshal(m proto.Message) json.RawMessage {
	b, err := workloadv1.ReadableJSON(m)
	if err != nil {
		return json.RawMessage(`{"error":` + string(mustJSON(err.Error())) + `}`)
	}
	return b
}

func mustJSON(s string) []byte {
	b, _ := json.Marshal(s)
	return b
}
