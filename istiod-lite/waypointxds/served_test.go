package waypointxds

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestServedServices(t *testing.T) {
	st := newState().
		ns("shop", LabelUseWaypoint, "waypoint").
		ns("bank").
		ns("remote", LabelUseWaypoint, "shared", LabelUseWaypointNamespace, "infra").
		waypoint("shop", "waypoint", "").
		waypoint("shop", "other", "all").
		waypoint("shop", "wl", "workload").
		waypoint("infra", "shared", "service")
	st.service("shop", "reviews", "10.96.0.10", nil, port("http", 9080, ""))
	st.service("shop", "optout", "10.96.0.11", []string{LabelUseWaypoint, "none"}, port("http", 80, ""))
	st.service("shop", "ratings", "10.96.0.12", []string{LabelUseWaypoint, "other"}, port("http", 80, ""))
	st.service("shop", "payments", "10.96.0.13", []string{LabelUseWaypoint, "wl"}, port("http", 80, ""))
	st.service("shop", "nowaypoint", "10.96.0.14", []string{LabelUseWaypoint, "missing"}, port("http", 80, ""))
	st.service("bank", "ledger", "10.96.1.10", nil, port("http", 80, ""))
	st.service("bank", "audit", "10.96.1.11", []string{LabelUseWaypoint, "waypoint", LabelUseWaypointNamespace, "shop"}, port("http", 80, ""))
	st.service("bank", "local", "10.96.1.12", []string{LabelUseWaypoint, "waypoint"}, port("http", 80, "")) // bank/waypoint does not exist
	st.service("remote", "api", "10.96.2.10", nil, port("http", 80, ""))
	ext := st.service("shop", "external", "", nil, port("http", 80, ""))
	ext.Spec.Type = corev1.ServiceTypeExternalName

	names := func(wp Waypoint) []string {
		var out []string
		for _, s := range ServedServices(st, wp) {
			out = append(out, s.Namespace+"/"+s.Name)
		}
		return out
	}
	for _, c := range []struct {
		wp   Waypoint
		want []string
	}{
		// Namespace label; the Service label "none" opts out; another
		// waypoint by Service label; a cross-namespace Service by
		// use-waypoint-namespace; never the waypoints' own Services.
		{Waypoint{"shop", "waypoint"}, []string{"bank/audit", "shop/reviews"}},
		{Waypoint{"shop", "other"}, []string{"shop/ratings"}},
		// waypoint-for workload serves no Services.
		{Waypoint{"shop", "wl"}, nil},
		// Namespace label with use-waypoint-namespace.
		{Waypoint{"infra", "shared"}, []string{"remote/api"}},
		{Waypoint{"bank", "waypoint"}, nil},
	} {
		if got := names(c.wp); !slices.Equal(got, c.want) {
			t.Errorf("%s serves %v, want %v", c.wp, got, c.want)
		}
	}
	for _, s := range st.services {
		if s.Labels[LabelGatewayName] != "" {
			if wp, ok := ServiceWaypoint(st, s); ok {
				t.Errorf("waypoint Service %s/%s served by %s", s.Namespace, s.Name, wp)
			}
		}
	}
}

func TestBuildErrors(t *testing.T) {
	st := newState().waypoint("shop", "waypoint", "")
	if _, _, err := Build(st, Waypoint{"shop", "nope"}, testOptions()); err == nil {
		t.Error("unknown waypoint: no error")
	}
	for _, roots := range []string{"", "garbage", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
		string(testRoot) + "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"} {
		if err := CheckRootCerts([]byte(roots)); err == nil {
			t.Errorf("root certificates %q: no error", roots)
		}
	}
	if err := CheckRootCerts(testRoot); err != nil {
		t.Error(err)
	}
	if _, _, err := Build(st, Waypoint{"shop", "waypoint"}, Options{}); err == nil {
		t.Error("no root certificates: no error")
	}
	st.gateways[0].Spec.GatewayClassName = "other"
	if _, _, err := Build(st, Waypoint{"shop", "waypoint"}, testOptions()); err == nil {
		t.Error("Gateway of another class: no error")
	}
}
