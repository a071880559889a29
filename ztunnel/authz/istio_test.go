package authz

import (
	"net/netip"
	"testing"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/istiod-lite/ambient"
	"github.com/ambit-mesh/ambit/pkg/identity"
)

// These tests run real security.istio.io objects through istiod-lite's
// translation (istiod-lite/ambient) and evaluate the result, so that what
// ztunnel decides is checked against what the user wrote, end to end.

// mesh is a translated world: namespaces "foo" and "bar" (ambient), and
// "istio-system".
type mesh struct {
	t  *testing.T
	ix *ambient.Index
}

func newMesh(t *testing.T) *mesh {
	ix := ambient.NewIndex(ambient.Options{})
	for _, ns := range []string{"foo", "bar", "istio-system"} {
		ix.UpsertNamespace(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{ambient.LabelDataplaneMode: ambient.DataplaneModeAmbient}}})
	}
	return &mesh{t: t, ix: ix}
}

func (m *mesh) pod(ns, name, ip string, labels map[string]string) {
	m.ix.UpsertPod(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: name},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	})
}

// policy applies an AuthorizationPolicy written in YAML, as in Istio's
// documentation.
func (m *mesh) policy(doc string) {
	m.t.Helper()
	js, err := yaml.YAMLToJSON([]byte(doc))
	if err != nil {
		m.t.Fatal(err)
	}
	p, err := ambient.DecodeAuthorizationPolicy(js)
	if err != nil {
		m.t.Fatal(err)
	}
	if _, err := m.ix.UpsertAuthorizationPolicy(p); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mesh) peerAuth(ns, name string, created int64, selector map[string]string, mode securityapi.PeerAuthentication_MutualTLS_Mode, ports map[uint32]securityapi.PeerAuthentication_MutualTLS_Mode) {
	m.t.Helper()
	p := &securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: metav1.Unix(created, 0)}}
	p.Spec.Mtls = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
	if selector != nil {
		p.Spec.Selector = &typeapi.WorkloadSelector{MatchLabels: selector}
	}
	for port, mode := range ports {
		if p.Spec.PortLevelMtls == nil {
			p.Spec.PortLevelMtls = map[uint32]*securityapi.PeerAuthentication_MutualTLS{}
		}
		p.Spec.PortLevelMtls[port] = &securityapi.PeerAuthentication_MutualTLS{Mode: mode}
	}
	if _, err := m.ix.UpsertPeerAuthentication(p); err != nil {
		m.t.Fatal(err)
	}
}

func (m *mesh) workload(ns, name string) *workloadv1.Workload {
	m.t.Helper()
	w := m.ix.Address(ambient.WorkloadUID("Kubernetes", ns, name)).GetWorkload()
	if w == nil {
		m.t.Fatalf("no workload %s/%s", ns, name)
	}
	return w
}

// policies returns every translated Authorization; Evaluate keeps those
// that apply to the destination.
func (m *mesh) policies() []*workloadv1.Authorization {
	var out []*workloadv1.Authorization
	for _, p := range m.ix.Snapshot().Authorizations {
		out = append(out, p)
	}
	return out
}

type conn struct {
	from     string // "<ns>/<sa>", or "" for plain text
	srcIP    string
	toNS, to string // destination pod
	port     uint16
	allowed  bool
}

func (m *mesh) check(t *testing.T, conns ...conn) {
	t.Helper()
	pols := m.policies()
	for _, c := range conns {
		w := m.workload(c.toNS, c.to)
		ci := ConnInfo{
			SourceIP:        netip.MustParseAddr(c.srcIP),
			DestinationIP:   addrFromBytes(w.GetAddresses()[0]),
			DestinationPort: c.port,
			Destination:     w,
		}
		if c.from != "" {
			ns, sa, _ := cutSlash(c.from)
			ci.SourceIdentity = identity.Identity{TrustDomain: "cluster.local", Namespace: ns, ServiceAccount: sa}
		}
		if d := Evaluate(ci, pols); d.Allowed != c.allowed {
			t.Errorf("%q (%s) -> %s/%s:%d: %v, want allowed=%v", c.from, c.srcIP, c.toNS, c.to, c.port, d, c.allowed)
		}
	}
}

func cutSlash(s string) (string, string, bool) {
	for i := range len(s) {
		if s[i] == '/' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func TestIstioDocumentedPolicies(t *testing.T) {
	setup := func(t *testing.T) *mesh {
		m := newMesh(t)
		m.pod("foo", "httpbin", "10.0.0.10", map[string]string{"app": "httpbin"})
		m.pod("foo", "other", "10.0.0.11", map[string]string{"app": "other"})
		m.pod("bar", "db", "10.0.1.10", map[string]string{"app": "db"})
		return m
	}

	t.Run("allow-nothing", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}`)
		m.check(t,
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: false},
			conn{from: "", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: false},
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "bar", to: "db", port: 5432, allowed: true}, // other namespace
		)
	})

	t.Run("deny-all", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: foo}
spec:
  action: DENY
  rules:
  - {}`)
		m.check(t,
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: false},
			conn{from: "bar/db", srcIP: "10.0.1.10", toNS: "foo", to: "other", port: 80, allowed: false},
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "bar", to: "db", port: 5432, allowed: true},
		)
	})

	t.Run("allow-all overrides allow-nothing", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: foo}
spec: {}`)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-all, namespace: foo}
spec:
  rules:
  - {}`)
		m.check(t, conn{from: "", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: true})
	})

	t.Run("ambient L4 example: allow curl to httpbin", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-curl-to-httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/foo/sa/curl]`)
		m.check(t,
			conn{from: "foo/curl", srcIP: "10.0.0.12", toNS: "foo", to: "httpbin", port: 8000, allowed: true},
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: false},
			conn{from: "", srcIP: "10.0.0.12", toNS: "foo", to: "httpbin", port: 8000, allowed: false},       // plain text has no principal
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "other", port: 8000, allowed: true}, // not selected
		)
	})

	t.Run("reference example with HTTP attributes allows nothing at L4", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/curl"]
    - source:
        namespaces: ["test"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/info*"]
    - operation:
        methods: ["POST"]
        paths: ["/data"]
    when:
    - key: request.auth.claims[iss]
      values: ["https://accounts.google.com"]`)
		m.check(t, conn{from: "default/curl", srcIP: "10.0.9.1", toNS: "foo", to: "httpbin", port: 8000, allowed: false})
	})

	t.Run("deny from namespaces other than foo", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin, namespace: foo}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]`)
		m.check(t,
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: true},
			conn{from: "bar/db", srcIP: "10.0.1.10", toNS: "foo", to: "httpbin", port: 8000, allowed: false},
			conn{from: "", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: false}, // no namespace: not foo
		)
	})

	t.Run("DENY with HTTP attributes denies more broadly at L4", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-post, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["bar"]
    to:
    - operation:
        methods: ["POST"]`)
		m.check(t,
			conn{from: "bar/db", srcIP: "10.0.1.10", toNS: "foo", to: "httpbin", port: 8000, allowed: false}, // any method
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8000, allowed: true},
		)
	})

	t.Run("ipBlocks and ports", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ip-allow, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  rules:
  - from:
    - source:
        ipBlocks: ["1.2.3.4", "5.6.7.0/24"]
    to:
    - operation:
        ports: ["8080"]`)
		m.check(t,
			conn{from: "", srcIP: "1.2.3.4", toNS: "foo", to: "httpbin", port: 8080, allowed: true},
			conn{from: "foo/other", srcIP: "5.6.7.99", toNS: "foo", to: "httpbin", port: 8080, allowed: true},
			conn{from: "foo/other", srcIP: "5.6.8.1", toNS: "foo", to: "httpbin", port: 8080, allowed: false},
			conn{from: "foo/other", srcIP: "1.2.3.4", toNS: "foo", to: "httpbin", port: 9090, allowed: false},
		)
	})

	t.Run("notPorts and notIpBlocks in a DENY", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-8080-from-inside, namespace: foo}
spec:
  action: DENY
  rules:
  - to:
    - operation:
        notPorts: ["8080"]
  - from:
    - source:
        notIpBlocks: ["10.0.0.0/8"]`)
		m.check(t,
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8080, allowed: true},
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 9090, allowed: false},
			conn{from: "foo/other", srcIP: "192.168.0.1", toNS: "foo", to: "httpbin", port: 8080, allowed: false},
		)
	})

	t.Run("when conditions", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cond, namespace: foo}
spec:
  rules:
  - when:
    - key: source.namespace
      values: ["bar"]
    - key: destination.port
      notValues: ["9090"]
    - key: source.ip
      values: ["10.0.1.0/24"]`)
		m.check(t,
			conn{from: "bar/db", srcIP: "10.0.1.10", toNS: "foo", to: "httpbin", port: 8080, allowed: true},
			conn{from: "bar/db", srcIP: "10.0.1.10", toNS: "foo", to: "httpbin", port: 9090, allowed: false},
			conn{from: "bar/db", srcIP: "10.0.2.10", toNS: "foo", to: "httpbin", port: 8080, allowed: false},
			conn{from: "foo/other", srcIP: "10.0.1.10", toNS: "foo", to: "httpbin", port: 8080, allowed: false},
		)
	})

	t.Run("serviceAccounts", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: sa, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  rules:
  - from:
    - source:
        serviceAccounts: ["bar/db", "other"]`)
		m.check(t,
			conn{from: "bar/db", srcIP: "10.0.1.10", toNS: "foo", to: "httpbin", port: 8080, allowed: true},
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "foo", to: "httpbin", port: 8080, allowed: true},
			conn{from: "bar/other", srcIP: "10.0.1.11", toNS: "foo", to: "httpbin", port: 8080, allowed: false},
		)
	})

	t.Run("root namespace policy applies mesh-wide", func(t *testing.T) {
		m := setup(t)
		m.policy(`
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-plaintext, namespace: istio-system}
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"]`)
		m.check(t,
			conn{from: "", srcIP: "10.0.0.11", toNS: "bar", to: "db", port: 5432, allowed: false},
			conn{from: "foo/other", srcIP: "10.0.0.11", toNS: "bar", to: "db", port: 5432, allowed: true},
		)
	})
}

func TestPeerAuthentication(t *testing.T) {
	const (
		unset      = securityapi.PeerAuthentication_MutualTLS_UNSET
		strict     = securityapi.PeerAuthentication_MutualTLS_STRICT
		permissive = securityapi.PeerAuthentication_MutualTLS_PERMISSIVE
		disable    = securityapi.PeerAuthentication_MutualTLS_DISABLE
	)
	type want struct {
		ns, pod string
		port    uint16
		allowed bool
	}
	type mode = securityapi.PeerAuthentication_MutualTLS_Mode
	for _, tc := range []struct {
		name  string
		setup func(m *mesh)
		want  []want
	}{
		{"no PeerAuthentication", func(*mesh) {}, []want{{"foo", "web", 80, true}, {"bar", "db", 5432, true}}},
		{"mesh STRICT", func(m *mesh) {
			m.peerAuth("istio-system", "default", 1, nil, strict, nil)
		}, []want{{"foo", "web", 80, false}, {"bar", "db", 5432, false}}},
		{"mesh PERMISSIVE", func(m *mesh) {
			m.peerAuth("istio-system", "default", 1, nil, permissive, nil)
		}, []want{{"foo", "web", 80, true}}},
		{"DISABLE counts as PERMISSIVE", func(m *mesh) {
			m.peerAuth("istio-system", "default", 1, nil, strict, nil)
			m.peerAuth("foo", "off", 1, nil, disable, nil)
		}, []want{{"foo", "web", 80, true}, {"bar", "db", 5432, false}}},
		{"namespace STRICT", func(m *mesh) {
			m.peerAuth("bar", "strict", 1, nil, strict, nil)
		}, []want{{"foo", "web", 80, true}, {"bar", "db", 5432, false}}},
		{"workload STRICT in a PERMISSIVE namespace", func(m *mesh) {
			m.peerAuth("foo", "ns", 1, nil, permissive, nil)
			m.peerAuth("foo", "web", 2, map[string]string{"app": "web"}, strict, nil)
		}, []want{{"foo", "web", 80, false}, {"foo", "api", 80, true}}},
		{"STRICT with a PERMISSIVE port", func(m *mesh) {
			m.peerAuth("istio-system", "default", 1, nil, strict, nil)
			m.peerAuth("foo", "web-ports", 2, map[string]string{"app": "web"}, unset, map[uint32]mode{9090: permissive})
		}, []want{{"foo", "web", 80, false}, {"foo", "web", 9090, true}, {"foo", "api", 9090, false}}},
		{"PERMISSIVE with a STRICT port", func(m *mesh) {
			m.peerAuth("foo", "web-ports", 2, map[string]string{"app": "web"}, permissive, map[uint32]mode{8443: strict})
		}, []want{{"foo", "web", 80, true}, {"foo", "web", 8443, false}, {"foo", "api", 8443, true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			m.pod("foo", "web", "10.0.0.1", map[string]string{"app": "web"})
			m.pod("foo", "api", "10.0.0.2", map[string]string{"app": "api"})
			m.pod("bar", "db", "10.0.1.1", map[string]string{"app": "db"})
			tc.setup(m)
			pols := m.policies()
			for _, w := range tc.want {
				wl := m.workload(w.ns, w.pod)
				ok, by := PlaintextAllowed(wl, w.port, pols)
				if ok != w.allowed || ok != (by == "") {
					t.Errorf("%s/%s:%d: plaintext allowed=%v by %q, want %v", w.ns, w.pod, w.port, ok, by, w.allowed)
				}
				// Evaluate agrees, names the PeerAuthentication, and lets
				// mTLS through.
				c := ConnInfo{SourceIP: netip.MustParseAddr("10.9.9.9"), DestinationIP: addrFromBytes(wl.GetAddresses()[0]),
					DestinationPort: w.port, Destination: wl}
				d := Evaluate(c, pols)
				if d.Allowed != w.allowed || (!d.Allowed && (!d.PeerAuthentication() || d.Policy != by)) {
					t.Errorf("%s/%s:%d: Evaluate %v (peer authentication %v), PlaintextAllowed by %q", w.ns, w.pod, w.port, d, d.PeerAuthentication(), by)
				}
				c.SourceIdentity = identity.Identity{TrustDomain: "cluster.local", Namespace: "x", ServiceAccount: "y"}
				if d := Evaluate(c, pols); !d.Allowed {
					t.Errorf("%s/%s:%d: mTLS denied: %v", w.ns, w.pod, w.port, d)
				}
			}
		})
	}
}

func TestPlaintextAllowedIgnoresOtherPolicies(t *testing.T) {
	w := &workloadv1.Workload{Namespace: "app", AuthorizationPolicies: []string{"app/user-deny"}}
	userDeny := policy("app", "user-deny", selected, deny, group())
	if ok, _ := PlaintextAllowed(w, 80, []*workloadv1.Authorization{userDeny}); !ok {
		t.Error("a user DENY policy is not a PeerAuthentication")
	}
	// A derived policy the workload does not list does not apply.
	static := policy("istio-system", StaticStrictPolicyName, selected, deny,
		group(rules(&workloadv1.Match{NotPrincipals: sms(presence())})))
	if ok, _ := PlaintextAllowed(w, 80, []*workloadv1.Authorization{static}); !ok {
		t.Error("unlisted static STRICT policy applied")
	}
	w.AuthorizationPolicies = append(w.AuthorizationPolicies, "istio-system/"+StaticStrictPolicyName)
	if ok, by := PlaintextAllowed(w, 80, []*workloadv1.Authorization{static}); ok || by != "istio-system/"+StaticStrictPolicyName {
		t.Errorf("listed static STRICT: %v %q", ok, by)
	}
	if ambient.StaticStrictPolicyName != StaticStrictPolicyName {
		t.Error("static STRICT policy name differs from the translation's")
	}
}
