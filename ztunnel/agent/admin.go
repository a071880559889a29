package agent

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// enrolledPod is one served pod in the admin view.
type enrolledPod struct {
	Pod      string   `json:"pod"`
	UID      string   `json:"uid"`
	IPs      []string `json:"ips"`
	Identity string   `json:"identity,omitempty"`
	Serving  bool     `json:"serving"`
}

// configDump is ztunnel's admin view: what it knows of the mesh, which
// pods it serves, and which certificates it holds.
type configDump struct {
	Node           string            `json:"node"`
	Pods           []enrolledPod     `json:"enrolledPods"`
	Certificates   []certs.CertInfo  `json:"certificates"`
	Workloads      []json.RawMessage `json:"workloads"`
	Services       []json.RawMessage `json:"services"`
	Authorizations []json.RawMessage `json:"policies"`
}

func adminHandler(node string, store *state.Store, served *servedPods) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		snap := store.Snapshot()
		d := configDump{Node: node, Pods: served.list(), Certificates: served.certs.Certificates(),
			Workloads: []json.RawMessage{}, Services: []json.RawMessage{}, Authorizations: []json.RawMessage{}}
		for _, wl := range snap.Workloads {
			d.Workloads = append(d.Workloads, toJSON(wl))
		}
		for _, svc := range snap.Services {
			d.Services = append(d.Services, toJSON(svc))
		}
		for _, p := range snap.Authorizations {
			d.Authorizations = append(d.Authorizations, toJSON(p))
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
	})
	return mux
}

func toJSON(m proto.Message) json.RawMessage {
	b, err := workloadv1.ReadableJSON(m)
	if err != nil {
		return json.RawMessage(`{}`)
	}
	return b
}

// list returns the served pods, sorted.
func (s *servedPods) list() []enrolledPod {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]enrolledPod, 0, len(s.byKey))
	for key, sp := range s.byKey {
		ep := enrolledPod{Pod: sp.name, UID: key, Serving: sp.serving != nil}
		if !sp.id.IsZero() {
			ep.Identity = sp.id.String()
		}
		for _, ip := range sp.ips {
			ep.IPs = append(ep.IPs, ip.String())
		}
		out = append(out, ep)
	}
	slices.SortFunc(out, func(a, b enrolledPod) int { return strings.Compare(a.Pod, b.Pod) })
	return out
}
