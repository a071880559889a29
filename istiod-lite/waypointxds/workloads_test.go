package waypointxds

import (
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

// podObj adds a running pod with labels.
func (f *fakeState) podObj(ns, name, ip, sa string, labels ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: kv(labels...)},
		Spec:       corev1.PodSpec{ServiceAccountName: sa},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
	f.pods = append(f.pods, p)
	return p
}

func TestServedWorkloads(t *testing.T) {
	st := newState().
		ns("apps", "istio.io/dataplane-mode", "ambient", LabelUseWaypoint, "wl").
		ns("plain").
		waypoint("apps", "wl", "workload").
		waypoint("apps", "svc", "").
		waypoint("apps", "both", "all")
	st.podObj("apps", "by-namespace", "10.0.0.1", "a")
	st.podObj("apps", "own-label", "10.0.0.2", "a", LabelUseWaypoint, "both")
	st.podObj("apps", "service-waypoint", "10.0.0.3", "a", LabelUseWaypoint, "svc")
	st.podObj("apps", "opted-out", "10.0.0.4", "a", LabelUseWaypoint, waypointNone)
	st.podObj("apps", "not-captured", "10.0.0.5", "a", "istio.io/dataplane-mode", "none")
	st.podObj("apps", "no-ip", "", "a")
	done := st.podObj("apps", "done", "10.0.0.6", "a")
	done.Status.Phase = corev1.PodSucceeded
	st.podObj("plain", "uncaptured", "10.0.1.1", "a", LabelUseWaypoint, "wl", LabelUseWaypointNamespace, "apps")
	st.podObj("plain", "elsewhere", "10.0.1.2", "a", "istio.io/dataplane-mode", "ambient", LabelUseWaypoint, "wl", LabelUseWaypointNamespace, "apps")

	names := func(wp string) []string {
		var out []string
		for _, p := range ServedWorkloads(st, Waypoint{Namespace: "apps", Name: wp}) {
			out = append(out, p.Namespace+"/"+p.Name)
		}
		return out
	}
	for wp, want := range map[string][]string{
		"wl":   {"apps/by-namespace", "plain/elsewhere"},
		"both": {"apps/own-label"},
		"svc":  nil,
	} {
		if got := names(wp); !slices.Equal(got, want) {
			t.Errorf("waypoint %s serves workloads %v, want %v", wp, got, want)
		}
	}
}

// A workload waypoint gets direct-http and direct-tcp on its pods'
// addresses (any port), policies for the whole waypoint on both, and the
// encap cluster listing each pod with its identity.
func TestWorkloadChainsAndEncap(t *testing.T) {
	st := newState().ns("apps", "istio.io/dataplane-mode", "ambient", LabelUseWaypoint, "wp").waypoint("apps", "wp", "all")
	st.podObj("apps", "api-1", "10.0.0.1", "api")
	st.podObj("apps", "api-2", "fd00::2", "")
	st.service("apps", "api", "10.96.0.9", nil, port("http", 80, ""))
	st.policy(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: wp}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
`)
	st.policy(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: service-only, namespace: apps}
spec:
  targetRefs: [{kind: Service, group: "", name: api}]
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
`)
	res, rep := build(t, st, "apps", "wp")
	if want := []types.NamespacedName{{Namespace: "apps", Name: "api-1"}, {Namespace: "apps", Name: "api-2"}}; !slices.Equal(rep.Workloads, want) {
		t.Errorf("report workloads %v, want %v", rep.Workloads, want)
	}
	for _, name := range []string{directHTTPChain, directTCPChain} {
		m := chain(t, res, name).GetFilterChainMatch()
		var got []string
		for _, r := range m.GetPrefixRanges() {
			got = append(got, r.GetAddressPrefix()+"/"+r.GetPrefixLen().String())
		}
		if m.GetDestinationPort() != nil || len(got) != 2 {
			t.Errorf("%s match %v", name, m)
		}
	}
	// Port 80 has the Service's VIP chains, so Envoy would not fall back
	// to port-less chains there: the direct chains have a copy for it.
	for _, name := range []string{directHTTPChain + "|80", directTCPChain + "|80"} {
		if m := chain(t, res, name).GetFilterChainMatch(); m.GetDestinationPort().GetValue() != 80 || len(m.GetPrefixRanges()) != 2 {
			t.Errorf("%s match %v", name, m)
		}
	}
	if alpn := chain(t, res, directHTTPChain).GetFilterChainMatch().GetApplicationProtocols(); !slices.Equal(alpn, []string{"http/1.1", "h2c"}) {
		t.Errorf("direct-http application protocols %v", alpn)
	}
	// The Gateway policy applies to workload traffic; the Service one
	// does not (it is about the Service's traffic).
	attrs := request("spiffe://cluster.local/ns/apps/sa/client", "10.0.9.9", 8080, "GET", "/admin")
	if authorize(t, res, directHTTPChain, attrs) {
		t.Error("GET /admin to a workload allowed despite the Gateway's DENY")
	}
	attrs = request("spiffe://cluster.local/ns/apps/sa/client", "10.0.9.9", 8080, "DELETE", "/x")
	if !authorize(t, res, directHTTPChain, attrs) {
		t.Error("DELETE to a workload denied by a Service-targeted policy")
	}
	// On opaque TCP the DENY's path cannot be checked: fail-closed, the
	// rule matches more (as on a Service's TCP chain).
	if authorize(t, res, directTCPChain, attrs) {
		t.Error("TCP to a workload allowed under a DENY whose path cannot be checked")
	}
	// The route sends every request to encap.
	hcm := &hcmv3.HttpConnectionManager{}
	if err := chain(t, res, directHTTPChain).GetFilters()[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	if _, err := router.Compile(hcm.GetRouteConfig()); err != nil {
		t.Fatalf("direct-http route: %v", err)
	}
	if c := hcm.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRoute().GetCluster(); c != encap {
		t.Errorf("direct-http routes to %q", c)
	}
	cl := res[resource.ClusterType][encap].(*clusterv3.Cluster)
	ep := cl.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetEnvoyInternalAddress()
	if cl.GetType() != clusterv3.Cluster_STATIC || ep.GetServerListenerName() != connectOriginate || ep.GetEndpointId() != "" {
		t.Errorf("encap cluster %v", cl)
	}
	var dests []string
	for _, v := range cl.GetMetadata().GetFilterMetadata()[ambitMetadataKey].GetFields()["destinations"].GetListValue().GetValues() {
		f := v.GetStructValue().GetFields()
		dests = append(dests, f["address"].GetStringValue()+" "+f["identity"].GetStringValue()+" "+f["workload"].GetStringValue()+" "+f["namespace"].GetStringValue())
	}
	want := []string{
		"10.0.0.1 spiffe://cluster.local/ns/apps/sa/api api-1 apps",
		"fd00::2 spiffe://cluster.local/ns/apps/sa/default api-2 apps",
	}
	if !slices.Equal(dests, want) {
		t.Errorf("encap destinations\n got %q\nwant %q", dests, want)
	}
}

// Without workloads there are no direct chains, and encap lists nothing.
func TestNoWorkloadsNoDirectChains(t *testing.T) {
	st := newState().ns("apps", "istio.io/dataplane-mode", "ambient").waypoint("apps", "wp", "service")
	st.podObj("apps", "api-1", "10.0.0.1", "api", LabelUseWaypoint, "wp")
	res, rep := build(t, st, "apps", "wp")
	if len(rep.Workloads) != 0 || slices.Contains(chainNames(t, res), directHTTPChain) {
		t.Errorf("a service waypoint took workloads: %v, chains %v", rep.Workloads, chainNames(t, res))
	}
	cl := res[resource.ClusterType][encap].(*clusterv3.Cluster)
	if n := len(cl.GetMetadata().GetFilterMetadata()[ambitMetadataKey].GetFields()["destinations"].GetListValue().GetValues()); n != 0 {
		t.Errorf("encap lists %d destinations", n)
	}
}

// Two pods briefly claiming one address (a reused IP): it is listed once,
// for the first, in the chains and in encap (the waypoint refuses an
// address listed twice with different identities).
func TestWorkloadAddressListedOnce(t *testing.T) {
	st := newState().ns("apps", "istio.io/dataplane-mode", "ambient", LabelUseWaypoint, "wp").waypoint("apps", "wp", "workload")
	st.podObj("apps", "a", "10.0.0.1", "sa-a")
	st.podObj("apps", "b", "10.0.0.1", "sa-b")
	res, _ := build(t, st, "apps", "wp")
	if n := len(chain(t, res, directTCPChain).GetFilterChainMatch().GetPrefixRanges()); n != 1 {
		t.Errorf("direct-tcp has %d prefix ranges, want 1", n)
	}
	cl := res[resource.ClusterType][encap].(*clusterv3.Cluster)
	vals := cl.GetMetadata().GetFilterMetadata()[ambitMetadataKey].GetFields()["destinations"].GetListValue().GetValues()
	if len(vals) != 1 || vals[0].GetStructValue().GetFields()["identity"].GetStringValue() != "spiffe://cluster.local/ns/apps/sa/sa-a" {
		t.Errorf("encap destinations %v", vals)
	}
}
