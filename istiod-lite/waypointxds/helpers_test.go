package waypointxds

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// fakeState is an in-memory State.
type fakeState struct {
	namespaces map[string]*corev1.Namespace
	services   []*corev1.Service
	slices     map[string][]*discoveryv1.EndpointSlice // "ns/svc"
	workloads  map[netip.Addr]Workload
	http       []*gatewayv1.HTTPRoute
	grpc       []*gatewayv1.GRPCRoute
	grants     map[string]bool // "from->ns/name"
	policies   []*securityv1.AuthorizationPolicy
	gateways   []*gatewayv1.Gateway
	pods       []*corev1.Pod
}

func newState() *fakeState {
	return &fakeState{
		namespaces: map[string]*corev1.Namespace{},
		slices:     map[string][]*discoveryv1.EndpointSlice{},
		workloads:  map[netip.Addr]Workload{},
		grants:     map[string]bool{},
	}
}

func (f *fakeState) Namespace(name string) *corev1.Namespace { return f.namespaces[name] }
func (f *fakeState) Services() []*corev1.Service             { return f.services }
func (f *fakeState) Service(ns, name string) *corev1.Service {
	for _, s := range f.services {
		if s.Namespace == ns && s.Name == name {
			return s
		}
	}
	return nil
}
func (f *fakeState) EndpointSlices(ns, svc string) []*discoveryv1.EndpointSlice {
	return f.slices[ns+"/"+svc]
}
func (f *fakeState) Workload(ip netip.Addr) (Workload, bool) {
	w, ok := f.workloads[ip]
	return w, ok
}
func (f *fakeState) HTTPRoutes() []*gatewayv1.HTTPRoute { return f.http }
func (f *fakeState) GRPCRoutes() []*gatewayv1.GRPCRoute { return f.grpc }
func (f *fakeState) ReferenceGranted(from, ns, name string) bool {
	return f.grants[from+"->"+ns+"/"+name]
}
func (f *fakeState) AuthorizationPolicies() []*securityv1.AuthorizationPolicy { return f.policies }
func (f *fakeState) Gateway(ns, name string) *gatewayv1.Gateway {
	for _, g := range f.gateways {
		if g.Namespace == ns && g.Name == name {
			return g
		}
	}
	return nil
}

func (f *fakeState) Pods() []*corev1.Pod { return f.pods }

func (f *fakeState) ns(name string, labels ...string) *fakeState {
	f.namespaces[name] = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: kv(labels...)}}
	return f
}

func (f *fakeState) waypoint(ns, name, waypointFor string) *fakeState {
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "istio-waypoint", Listeners: []gatewayv1.Listener{{
			Name: "mesh", Port: 15008, Protocol: "HBONE",
		}}},
	}
	if waypointFor != "" {
		gw.Labels = map[string]string{LabelWaypointFor: waypointFor}
	}
	f.gateways = append(f.gateways, gw)
	// Its own Service, which must never be served.
	f.services = append(f.services, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{
			LabelGatewayName: name, "gateway.istio.io/managed": "istio.io-mesh-controller",
		}},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.255.1", Ports: []corev1.ServicePort{{Name: "mesh", Port: 15008}}},
	})
	return f
}

func kv(pairs ...string) map[string]string {
	if len(pairs) == 0 {
		return nil
	}
	m := map[string]string{}
	for i := 0; i+1 < len(pairs); i += 2 {
		m[pairs[i]] = pairs[i+1]
	}
	return m
}

// port is a Service port named name (appProtocol ap unless empty) whose
// target is port+1000.
func port(name string, n int32, ap string) corev1.ServicePort {
	p := corev1.ServicePort{Name: name, Port: n, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(n + 1000)}
	if ap != "" {
		p.AppProtocol = &ap
	}
	return p
}

func (f *fakeState) service(ns, name, vip string, labels []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: kv(labels...)},
		Spec:       corev1.ServiceSpec{ClusterIP: vip, Ports: ports},
	}
	if vip != "" && vip != "None" {
		s.Spec.ClusterIPs = []string{vip}
	}
	f.services = append(f.services, s)
	return s
}

// endpoints adds one EndpointSlice for svc with the given pod IPs, ready,
// every Service port resolved to port+1000.
func (f *fakeState) endpoints(svc *corev1.Service, ips ...string) *discoveryv1.EndpointSlice {
	es := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: svc.Namespace, Name: svc.Name + "-" + string(rune('a'+len(f.slices[svc.Namespace+"/"+svc.Name])))},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if len(ips) > 0 && strings.Contains(ips[0], ":") {
		es.AddressType = discoveryv1.AddressTypeIPv6
	}
	for _, p := range svc.Spec.Ports {
		es.Ports = append(es.Ports, discoveryv1.EndpointPort{Name: ptr(p.Name), Port: ptr(p.Port + 1000), Protocol: ptr(corev1.ProtocolTCP)})
	}
	for _, ip := range ips {
		es.Endpoints = append(es.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}})
	}
	key := svc.Namespace + "/" + svc.Name
	f.slices[key] = append(f.slices[key], es)
	return es
}

// pod registers a captured (HBONE) or plain workload.
func (f *fakeState) pod(ip, ns, name, sa string, captured bool) {
	f.workloads[netip.MustParseAddr(ip)] = Workload{Name: name, Namespace: ns, ServiceAccount: sa, Captured: captured}
}

// policy decodes an AuthorizationPolicy from YAML as the controller does
// (strictly).
func (f *fakeState) policy(t testing.TB, y string) *securityv1.AuthorizationPolicy {
	t.Helper()
	js, err := yaml.YAMLToJSON([]byte(y))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ambient.DecodeAuthorizationPolicy(js)
	if err != nil {
		t.Fatal(err)
	}
	f.policies = append(f.policies, p)
	return p
}

func ptr[T any](v T) *T { return &v }

var base = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func svcParent(name string) gatewayv1.ParentReference {
	return gatewayv1.ParentReference{Group: ptr(gatewayv1.Group("")), Kind: ptr(gatewayv1.Kind("Service")), Name: gatewayv1.ObjectName(name)}
}

func backend(name string, port int32, weight int32) gatewayv1.HTTPBackendRef {
	return gatewayv1.HTTPBackendRef{BackendRef: gatewayv1.BackendRef{
		BackendObjectReference: gatewayv1.BackendObjectReference{Name: gatewayv1.ObjectName(name), Port: ptr(gatewayv1.PortNumber(port))},
		Weight:                 ptr(weight),
	}}
}

// testRoot is a self-signed CA certificate, PEM.
var testRoot = func() []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{Organization: []string{"cluster.local"}},
		NotBefore: base, NotAfter: base.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}()

func testOptions() Options { return Options{RootCerts: testRoot} }

// build builds and checks every resource (validateAll).
func build(t testing.TB, st State, ns, name string) (Resources, Report) {
	t.Helper()
	res, rep, err := Build(st, Waypoint{Namespace: ns, Name: name}, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	validateAll(t, res)
	return res, rep
}

type validator interface{ Validate() error }

// validateAll runs Validate on every resource and on every message packed
// in an Any below it, compiles every RouteConfiguration with
// waypoint/router and every RBAC configuration with waypoint/rbac, and
// checks that names are unique and match their keys.
func validateAll(t testing.TB, res Resources) {
	t.Helper()
	for typeURL, byName := range res {
		for name, m := range byName {
			if n := resourceName(m); n != name {
				t.Errorf("%s %q stored under %q", typeURL, n, name)
			}
			if err := validateDeep(m.ProtoReflect(), 0); err != nil {
				t.Errorf("%s %q: %v", typeURL, name, err)
			}
			if rc, ok := m.(*routev3.RouteConfiguration); ok {
				if _, err := router.Compile(rc); err != nil {
					t.Errorf("route %q does not compile: %v", name, err)
				}
			}
		}
	}
	for name, l := range res[resource.ListenerType] {
		seen := map[string]bool{}
		for _, fc := range l.(*listenerv3.Listener).GetFilterChains() {
			if seen[fc.GetName()] {
				t.Errorf("listener %q: duplicate filter chain %q", name, fc.GetName())
			}
			seen[fc.GetName()] = true
			for _, r := range chainRBAC(t, fc) {
				if _, err := rbac.Compile(r); err != nil {
					t.Errorf("listener %q chain %q: rbac does not compile: %v", name, fc.GetName(), err)
				}
			}
		}
	}
}

func resourceName(m proto.Message) string {
	if n, ok := m.(interface{ GetName() string }); ok {
		return n.GetName()
	}
	if c, ok := m.(interface{ GetClusterName() string }); ok {
		return c.GetClusterName()
	}
	return ""
}

func validateDeep(m protoreflect.Message, depth int) error {
	if depth > 64 {
		return nil
	}
	if v, ok := m.Interface().(validator); ok {
		if err := v.Validate(); err != nil {
			return err
		}
	}
	if a, ok := m.Interface().(*anypb.Any); ok {
		inner, err := a.UnmarshalNew()
		if err != nil {
			return err
		}
		return validateDeep(inner.ProtoReflect(), depth+1)
	}
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := 0; i < v.List().Len() && err == nil; i++ {
				err = validateDeep(v.List().Get(i).Message(), depth+1)
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				err = validateDeep(mv.Message(), depth+1)
				return err == nil
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			err = validateDeep(v.Message(), depth+1)
		}
		return err == nil
	})
	return err
}

// chainRBAC returns the RBAC configurations of a filter chain, in filter
// order (HTTP filters of its HCM, or network filters).
func chainRBAC(t testing.TB, fc *listenerv3.FilterChain) []*rbacv3.RBAC {
	t.Helper()
	var out []*rbacv3.RBAC
	for _, f := range fc.GetFilters() {
		switch f.GetName() {
		case filterNetworkRBAC:
			r := &rbacnetv3.RBAC{}
			if err := f.GetTypedConfig().UnmarshalTo(r); err != nil {
				t.Fatal(err)
			}
			out = append(out, r.GetRules())
		case filterHCM:
			h := &hcmv3.HttpConnectionManager{}
			if err := f.GetTypedConfig().UnmarshalTo(h); err != nil {
				t.Fatal(err)
			}
			for _, hf := range h.GetHttpFilters() {
				if hf.GetName() != filterHTTPRBAC {
					continue
				}
				r := &rbachttpv3.RBAC{}
				if err := hf.GetTypedConfig().UnmarshalTo(r); err != nil {
					t.Fatal(err)
				}
				out = append(out, r.GetRules())
			}
		}
	}
	return out
}

func listener(t testing.TB, res Resources, name string) *listenerv3.Listener {
	t.Helper()
	l, ok := res[resource.ListenerType][name].(*listenerv3.Listener)
	if !ok {
		t.Fatalf("no listener %q", name)
	}
	return l
}

func chain(t testing.TB, res Resources, name string) *listenerv3.FilterChain {
	t.Helper()
	for _, fc := range listener(t, res, mainInternal).GetFilterChains() {
		if fc.GetName() == name {
			return fc
		}
	}
	t.Fatalf("no filter chain %q in main_internal", name)
	return nil
}

func chainNames(t testing.TB, res Resources) []string {
	var out []string
	for _, fc := range listener(t, res, mainInternal).GetFilterChains() {
		out = append(out, fc.GetName())
	}
	return out
}

// authorize runs a chain's RBAC filters as the waypoint does: DENY then
// ALLOW must allow; LOG never blocks.
func authorize(t testing.TB, res Resources, chainName string, a *rbac.Attributes) bool {
	t.Helper()
	for _, r := range chainRBAC(t, chain(t, res, chainName)) {
		e, err := rbac.Compile(r)
		if err != nil {
			t.Fatalf("chain %q: %v", chainName, err)
		}
		if !e.Evaluate(a).Allowed {
			return false
		}
	}
	return true
}

// request is an HTTP request from peer (SPIFFE id, "" for none) at src.
func request(peer, src string, port uint16, method, path string, hdr ...string) *rbac.Attributes {
	h := http.Header{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h.Add(hdr[i], hdr[i+1])
	}
	return &rbac.Attributes{
		PeerPrincipal: peer, SourceIP: netip.MustParseAddr(src),
		DestinationIP: netip.MustParseAddr("10.96.0.10"), DestinationPort: port,
		Method: method, Path: path, Host: "reviews.shop.svc.cluster.local:" + strconv.Itoa(int(port)), Headers: h,
	}
}
