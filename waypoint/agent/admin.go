package agent

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ambit-mesh/ambit/pkg/workloadcert"
	"github.com/ambit-mesh/ambit/pkg/xdsclient"
	"github.com/ambit-mesh/ambit/waypoint/config"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// configDump is the waypoint's admin view: its identity and certificate,
// the xDS stream, and the configuration as compiled, with the hosts'
// live state (requests in flight, ejection).
type configDump struct {
	Identity    string        `json:"identity"`
	Certificate *certInfo     `json:"certificate,omitempty"`
	XDS         xdsInfo       `json:"xds"`
	Chains      []chainInfo   `json:"chains"`
	Routes      []string      `json:"routes"`
	Clusters    []clusterInfo `json:"clusters"`
	Workloads   int           `json:"workloads"`
	Roots       int           `json:"roots"`
}

type certInfo struct {
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"notAfter"`
}

type xdsInfo struct {
	Connected bool `json:"connected"`
	Synced    bool `json:"synced"`
}

type chainInfo struct {
	Name         string   `json:"name"`
	Port         uint32   `json:"port,omitempty"`
	Prefixes     []string `json:"prefixes,omitempty"`
	AppProtocols []string `json:"applicationProtocols,omitempty"`
	Kind         string   `json:"kind"` // http or tcp
	Route        string   `json:"route,omitempty"`
	Cluster      string   `json:"cluster,omitempty"`
	RBACFilters  int      `json:"rbacFilters"`
	Default      bool     `json:"default,omitempty"`
}

type clusterInfo struct {
	Name    string     `json:"name"`
	LB      string     `json:"lb"`
	Outlier bool       `json:"outlierDetection"`
	Hosts   []hostInfo `json:"hosts"`
}

type hostInfo struct {
	Address  string `json:"address"`
	HBONE    bool   `json:"hbone"`
	Identity string `json:"identity,omitempty"`
	Workload string `json:"workload,omitempty"`
	Active   int64  `json:"active"`
	Ejected  bool   `json:"ejected"`
}

func adminHandler(id string, cert *workloadcert.Source, xc *xdsclient.Client, store *config.Store, ups *upstream.Manager) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, _ *http.Request) {
		snap := store.Snapshot()
		d := configDump{Identity: id, Chains: []chainInfo{}, Routes: []string{}, Clusters: []clusterInfo{},
			Workloads: len(snap.Workloads), Roots: len(snap.Roots)}
		if c, err := cert.TLSCertificate(); err == nil && c.Leaf != nil {
			d.Certificate = &certInfo{Serial: c.Leaf.SerialNumber.Text(16), NotAfter: c.Leaf.NotAfter}
		}
		d.XDS.Connected = xc.Connected()
		select {
		case <-xc.Synced():
			d.XDS.Synced = true
		default:
		}
		chains := slices.Clone(snap.Chains)
		if snap.Default != nil {
			chains = append(chains, snap.Default)
		}
		for _, c := range chains {
			ci := chainInfo{Name: c.Name, Port: c.Port, AppProtocols: c.AppProtocols, Default: c == snap.Default}
			for _, p := range c.Prefixes {
				ci.Prefixes = append(ci.Prefixes, p.String())
			}
			if c.HTTP != nil {
				ci.Kind, ci.Route, ci.RBACFilters = "http", c.HTTP.RouteName, len(c.HTTP.RBAC)
			} else {
				ci.Kind, ci.Cluster, ci.RBACFilters = "tcp", c.TCP.Cluster, len(c.TCP.RBAC)
			}
			d.Chains = append(d.Chains, ci)
		}
		for name := range snap.Routes {
			d.Routes = append(d.Routes, name)
		}
		slices.Sort(d.Routes)
		for name := range snap.Clusters {
			cl := ups.Cluster(name)
			if cl == nil {
				continue
			}
			cfg := cl.Config()
			ci := clusterInfo{Name: name, LB: "ROUND_ROBIN", Outlier: cfg.Outlier != nil, Hosts: []hostInfo{}}
			if cfg.LeastRequest {
				ci.LB = "LEAST_REQUEST"
			}
			for _, h := range cl.Hosts() {
				hi := hostInfo{Address: h.Address().String(), HBONE: h.HBONE(), Workload: h.Workload, Active: h.Active(), Ejected: h.Ejected()}
				if !h.Identity().IsZero() {
					hi.Identity = h.Identity().String()
				}
				ci.Hosts = append(ci.Hosts, hi)
			}
			d.Clusters = append(d.Clusters, ci)
		}
		slices.SortFunc(d.Clusters, func(a, b clusterInfo) int { return strings.Compare(a.Name, b.Name) })
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
	})
	return mux
}
