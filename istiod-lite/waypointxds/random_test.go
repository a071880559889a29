package waypointxds

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
)

// randomState builds n namespaces' worth of Services (with random port
// protocols, endpoints, captured or not), HTTPRoutes and GRPCRoutes
// attached to them (valid and invalid backends, mirrors, cross-namespace
// references), and AuthorizationPolicies of every action and attribute,
// targeting the waypoint ns0/waypoint, its Services, the GatewayClass, or
// something else.
func randomState(seed uint64, n int) *fakeState {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	st := newState().ns("istio-system").waypoint("ns0", "waypoint", "")
	names := []string{"alpha", "beta", "gamma", "delta", "eps"}
	portNames := []string{"http", "http-web", "grpc", "tcp", "tls-x", "", "web", "mongo", "http2"}
	vip := 0
	for i := range n {
		ns := fmt.Sprintf("ns%d", i%4)
		if st.namespaces[ns] == nil {
			if r.IntN(4) == 0 {
				st.ns(ns)
			} else {
				st.ns(ns, LabelUseWaypoint, "waypoint", LabelUseWaypointNamespace, "ns0")
			}
		}
		name := fmt.Sprintf("%s-%d", names[r.IntN(len(names))], i)
		var labels []string
		if r.IntN(6) == 0 {
			labels = []string{LabelUseWaypoint, "none"}
		}
		var ports []portSpec
		for j := range 1 + r.IntN(4) {
			ports = append(ports, portSpec{portNames[r.IntN(len(portNames))] + suffix(j), int32(80 + j*1000 + r.IntN(3))})
		}
		vip++
		addr := fmt.Sprintf("10.96.%d.%d", vip/250, vip%250+1)
		if r.IntN(10) == 0 {
			addr = "None"
		}
		svc := st.service(ns, name, addr, labels, toPorts(r, ports)...)
		var ips []string
		for k := range r.IntN(5) {
			ip := fmt.Sprintf("10.1.%d.%d", i, k+1)
			ips = append(ips, ip)
			if r.IntN(2) == 0 {
				st.pod(ip, ns, name+"-pod", "sa-"+name, r.IntN(3) != 0)
			}
		}
		es := st.endpoints(svc, ips...)
		if len(es.Endpoints) > 0 && r.IntN(3) == 0 {
			es.Endpoints[0].Conditions.Ready = ptr(false)
		}
	}
	for i := range n {
		st.http = append(st.http, randomRoute(r, st, i))
	}
	for i := range n / 3 {
		st.grpc = append(st.grpc, randomGRPCRoute(r, st, i))
	}
	for i := range n {
		st.policies = append(st.policies, mustDecode(randomPolicy(r, st, i)))
	}
	return st
}

type portSpec struct {
	name string
	port int32
}

func suffix(j int) string {
	if j == 0 {
		return ""
	}
	return fmt.Sprintf("-%d", j)
}

func toPorts(r *rand.Rand, ps []portSpec) []corev1.ServicePort {
	var out []corev1.ServicePort
	for _, p := range ps {
		ap := ""
		if r.IntN(5) == 0 {
			ap = []string{"http", "tcp", "kubernetes.io/h2c", "other"}[r.IntN(4)]
		}
		out = append(out, port(strings.TrimPrefix(p.name, "-"), p.port, ap))
	}
	return out
}

func pick[T any](r *rand.Rand, s []T) T { return s[r.IntN(len(s))] }

func (f *fakeState) randomService(r *rand.Rand) (string, string, int32) {
	s := f.services[r.IntN(len(f.services))]
	p := int32(80)
	if len(s.Spec.Ports) > 0 {
		p = s.Spec.Ports[r.IntN(len(s.Spec.Ports))].Port
	}
	if r.IntN(8) == 0 {
		p = 1 // no such port
	}
	return s.Namespace, s.Name, p
}

func randomRoute(r *rand.Rand, st *fakeState, i int) *gatewayv1.HTTPRoute {
	ns, name, _ := st.randomService(r)
	routeNS := ns
	if r.IntN(5) == 0 {
		routeNS = "consumer"
	}
	pr := svcParent(name)
	pr.Namespace = ptr(gatewayv1.Namespace(ns))
	if r.IntN(4) == 0 {
		pr.Port = ptr(gatewayv1.PortNumber(pick(r, []int32{80, 81, 1080, 9999})))
	}
	rt := &gatewayv1.HTTPRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: routeNS, Name: fmt.Sprintf("route-%d", i), Generation: int64(i),
			CreationTimestamp: metav1.NewTime(base.Add(time.Duration(r.IntN(100)) * time.Second))},
		Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{pr}}},
	}
	if r.IntN(10) == 0 {
		rt.Spec.ParentRefs = append(rt.Spec.ParentRefs, svcParent("missing"))
	}
	for range 1 + r.IntN(3) {
		rule := gatewayv1.HTTPRouteRule{}
		rule.Matches = []gatewayv1.HTTPRouteMatch{{Path: &gatewayv1.HTTPPathMatch{
			Type:  ptr(pick(r, []gatewayv1.PathMatchType{gatewayv1.PathMatchPathPrefix, gatewayv1.PathMatchExact, gatewayv1.PathMatchRegularExpression})),
			Value: ptr(pick(r, []string{"/", "/a", "/b/c", "/api/v[0-9]+", "("})),
		}}}
		for range r.IntN(3) {
			bns, bname, bport := st.randomService(r)
			ref := backend(bname, bport, int32(r.IntN(3)))
			ref.Namespace = ptr(gatewayv1.Namespace(bns))
			if r.IntN(10) == 0 {
				ref.Name = "nonexistent"
			}
			if bns != routeNS && r.IntN(2) == 0 {
				st.grants[routeNS+"->"+bns+"/"+bname] = true
			}
			rule.BackendRefs = append(rule.BackendRefs, ref)
		}
		if r.IntN(4) == 0 {
			mns, mname, mport := st.randomService(r)
			rule.Filters = append(rule.Filters, gatewayv1.HTTPRouteFilter{
				Type: gatewayv1.HTTPRouteFilterRequestMirror,
				RequestMirror: &gatewayv1.HTTPRequestMirrorFilter{BackendRef: gatewayv1.BackendObjectReference{
					Name: gatewayv1.ObjectName(mname), Namespace: ptr(gatewayv1.Namespace(mns)), Port: ptr(gatewayv1.PortNumber(mport)),
				}},
			})
		}
		rt.Spec.Rules = append(rt.Spec.Rules, rule)
	}
	return rt
}

func randomGRPCRoute(r *rand.Rand, st *fakeState, i int) *gatewayv1.GRPCRoute {
	ns, name, port := st.randomService(r)
	return &gatewayv1.GRPCRoute{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("grpc-%d", i)},
		Spec: gatewayv1.GRPCRouteSpec{
			CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{svcParent(name)}},
			Rules: []gatewayv1.GRPCRouteRule{{
				Matches: []gatewayv1.GRPCRouteMatch{{Method: &gatewayv1.GRPCMethodMatch{Service: ptr("pkg.Svc"), Method: ptr("Get")}}},
				BackendRefs: []gatewayv1.GRPCBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
					Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(port)),
				}}}},
			}},
		},
	}
}

var (
	rndPrincipals = []string{"cluster.local/ns/ns1/sa/alpha", "*", "cluster.local/ns/ns2/*", "*/sa/beta", "bad principal"}
	rndNamespaces = []string{"ns1", "ns*", "*2", "*"}
	rndIPs        = []string{"10.0.0.0/8", "10.1.2.3", "fd00::/64", "::ffff:10.0.0.1", "nope"}
	rndHosts      = []string{"reviews", "*.svc.cluster.local", "api.*", "*", "Reviews.Shop:9080"}
	rndPaths      = []string{"/a", "/api/*", "*.json", "*", "/x/{*}/y"}
	rndMethods    = []string{"GET", "POST", "*"}
	rndKeys       = []string{"request.headers[x-user]", "source.ip", "source.namespace", "source.principal", "destination.port",
		"destination.ip", "remote.ip", "request.auth.claims[iss]", "connection.sni", "request.headers[]"}
)

func randomList(r *rand.Rand, values []string) string {
	var out []string
	for range 1 + r.IntN(2) {
		out = append(out, fmt.Sprintf("%q", pick(r, values)))
	}
	return "[" + strings.Join(out, ",") + "]"
}

func randomPolicy(r *rand.Rand, st *fakeState, i int) string {
	ns, name, _ := st.randomService(r)
	var target string
	switch r.IntN(6) {
	case 0:
		ns = "ns0"
		target = `"targetRefs":[{"group":"gateway.networking.k8s.io","kind":"Gateway","name":"waypoint"}],`
	case 1:
		ns = "istio-system"
		target = `"targetRefs":[{"group":"gateway.networking.k8s.io","kind":"GatewayClass","name":"istio-waypoint"}],`
	case 2, 3:
		target = fmt.Sprintf(`"targetRefs":[{"group":"","kind":"Service","name":%q}],`, name)
	case 4:
		target = `"selector":{"matchLabels":{"app":"x"}},`
	}
	action := pick(r, []string{"ALLOW", "DENY", "AUDIT", "CUSTOM", "ALLOW"})
	provider := ""
	if action == "CUSTOM" {
		provider = `"provider":{"name":"ext"},`
	}
	var rules []string
	for range r.IntN(3) {
		var parts []string
		if r.IntN(2) == 0 {
			src := map[string][]string{
				"principals": rndPrincipals, "notPrincipals": rndPrincipals, "namespaces": rndNamespaces, "notNamespaces": rndNamespaces,
				"ipBlocks": rndIPs, "notIpBlocks": rndIPs, "remoteIpBlocks": rndIPs, "requestPrincipals": {"iss/sub", "*"},
			}
			var fields []string
			for k, v := range src {
				if r.IntN(4) == 0 {
					fields = append(fields, fmt.Sprintf("%q:%s", k, randomList(r, v)))
				}
			}
			parts = append(parts, `"from":[{"source":{`+strings.Join(fields, ",")+`}}]`)
		}
		if r.IntN(2) == 0 {
			op := map[string][]string{
				"hosts": rndHosts, "notHosts": rndHosts, "ports": {"80", "1080", "0"}, "notPorts": {"81"},
				"methods": rndMethods, "notMethods": rndMethods, "paths": rndPaths, "notPaths": rndPaths,
			}
			var fields []string
			for k, v := range op {
				if r.IntN(4) == 0 {
					fields = append(fields, fmt.Sprintf("%q:%s", k, randomList(r, v)))
				}
			}
			parts = append(parts, `"to":[{"operation":{`+strings.Join(fields, ",")+`}}]`)
		}
		if r.IntN(3) == 0 {
			key := pick(r, rndKeys)
			vals := map[string][]string{"source.ip": rndIPs, "remote.ip": rndIPs, "destination.ip": rndIPs, "destination.port": {"80", "x"},
				"source.namespace": rndNamespaces, "source.principal": rndPrincipals}[key]
			if vals == nil {
				vals = []string{"a", "b*", "*c", "*"}
			}
			which := pick(r, []string{"values", "notValues"})
			parts = append(parts, fmt.Sprintf(`"when":[{"key":%q,%q:%s}]`, key, which, randomList(r, vals)))
		}
		rules = append(rules, "{"+strings.Join(parts, ",")+"}")
	}
	return fmt.Sprintf(`{"apiVersion":"security.istio.io/v1","kind":"AuthorizationPolicy","metadata":{"namespace":%q,"name":"p%d"},
		"spec":{%s%s"action":%q,"rules":[%s]}}`, ns, i, target, provider, action, strings.Join(rules, ","))
}

func TestRandomStatesValidate(t *testing.T) {
	var rbacs, problems, backends int
	for seed := range uint64(12) {
		st := randomState(seed, 40)
		res, rep := build(t, st, "ns0", "waypoint")
		if t.Failed() {
			t.Fatalf("seed %d", seed)
		}
		if len(rep.Services) == 0 || len(res[resource.RouteType]) == 0 {
			t.Fatalf("seed %d: nothing served: %+v", seed, rep.Services)
		}
		for _, fc := range listener(t, res, mainInternal).GetFilterChains() {
			rbacs += len(chainRBAC(t, fc))
		}
		for _, p := range rep.Policies {
			problems += len(p.Problems)
		}
		backends += len(rep.Backends)
		_ = MissingParents(st)
	}
	// The generator must exercise policies, their problems and backends.
	if rbacs == 0 || problems == 0 || backends == 0 {
		t.Fatalf("weak generator: %d rbac filters, %d policy problems, %d backends", rbacs, problems, backends)
	}
	t.Logf("%d rbac filters, %d policy problems, %d backends", rbacs, problems, backends)
}

// mustDecode decodes a generated policy (test input we control).
func mustDecode(js string) *securityv1.AuthorizationPolicy {
	p, err := ambient.DecodeAuthorizationPolicy([]byte(js))
	if err != nil {
		panic(fmt.Sprintf("%v: %s", err, js))
	}
	return p
}

func TestLargeStateValidates(t *testing.T) {
	st := randomState(99, 200)
	res, rep := build(t, st, "ns0", "waypoint")
	n := 0
	for _, byName := range res {
		n += len(byName)
	}
	t.Logf("%d services served, %d resources, %d route statuses, %d policies", len(rep.Services), n, len(rep.RouteStatuses), len(rep.Policies))
	if len(rep.Services) < 50 {
		t.Fatalf("only %d services served", len(rep.Services))
	}
}

// FuzzBuild builds random states under the fuzzer: the output always
// validates, compiles and has its RBAC compile
// (go test -run '^$' -fuzz FuzzBuild ./istiod-lite/waypointxds/).
func FuzzBuild(f *testing.F) {
	for _, s := range []uint64{1, 2, 3} {
		f.Add(s, uint8(10))
	}
	f.Fuzz(func(t *testing.T, seed uint64, n uint8) {
		st := randomState(seed, 1+int(n%30))
		build(t, st, "ns0", "waypoint")
	})
}
