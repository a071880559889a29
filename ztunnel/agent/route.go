package agent

import (
	"fmt"
	"net/netip"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/ztunnel/authz"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

// Router routes outbound connections from the mesh state: a Service VIP
// goes to one of its ready endpoints (or its waypoint), a workload address
// to that workload; captured destinations over HBONE to their node's
// ztunnel inside the destination pod (<ip>:15008), everything else as
// plain TCP.
type Router struct {
	Store       *state.Store
	Balancer    *state.Balancer
	Network     string
	TrustDomain string
}

var _ proxy.Router = (*Router)(nil)

// Route implements proxy.Router.
func (r *Router) Route(_ *proxy.Pod, dst netip.AddrPort) (proxy.Route, error) {
	d := r.Store.FindDestination(r.Network, dst.Addr())
	switch {
	case d.Service != nil:
		svc := d.Service
		key := svc.GetNamespace() + "/" + svc.GetHostname()
		if wp := svc.GetWaypoint(); wp != nil {
			rt, err := r.viaWaypoint(wp, dst, "service "+key)
			rt.Service = key
			return rt, err
		}
		t, err := r.Balancer.Pick(key, dst.Port())
		if err != nil {
			return proxy.Route{}, fmt.Errorf("service %s port %d: %w", key, dst.Port(), err)
		}
		ip, ok := firstAddr(t.Workload)
		if !ok {
			return proxy.Route{}, fmt.Errorf("service %s: endpoint %s has no address", key, t.Workload.GetUid())
		}
		// Straight to the endpoint, even one with a workload waypoint: that
		// takes traffic addressed to the pod itself (as Istio's ztunnel).
		uid := t.Workload.GetUid()
		r.Balancer.Acquire(uid)
		rt, err := r.toWorkload(t.Workload, netip.AddrPortFrom(ip, t.Port))
		if err != nil {
			r.Balancer.Release(uid)
			return proxy.Route{}, err
		}
		rt.Service = key
		rt.Done = func() { r.Balancer.Release(uid) }
		return rt, nil
	case d.Workload != nil:
		if wp := r.workloadWaypoint(d.Workload); wp != nil {
			rt, err := r.viaWaypoint(wp, dst, "workload "+d.Workload.GetUid())
			rt.DestinationWorkload, rt.DestinationNS = d.Workload.GetWorkloadName(), d.Workload.GetNamespace()
			return rt, err
		}
		return r.toWorkload(d.Workload, dst)
	default:
		// Not in the mesh's view (outside the cluster, or not yet known):
		// plain TCP, counted as passthrough.
		return proxy.Route{Target: dst}, nil
	}
}

func (r *Router) toWorkload(w *workloadv1.Workload, target netip.AddrPort) (proxy.Route, error) {
	rt := proxy.Route{Target: target, DestinationWorkload: w.GetWorkloadName(), DestinationNS: w.GetNamespace()}
	if w.GetTunnelProtocol() != workloadv1.TunnelProtocol_HBONE {
		return rt, nil
	}
	id, err := workloadIdentity(w, r.TrustDomain)
	if err != nil {
		return proxy.Route{}, err
	}
	rt.HBONE, rt.Identity = true, id
	rt.Proxy = netip.AddrPortFrom(target.Addr(), hbone.Port)
	return rt, nil
}

// workloadWaypoint is the waypoint of traffic addressed to w's own
// address: istiod-lite sets it only on captured workloads whose waypoint
// takes workload traffic.
func (r *Router) workloadWaypoint(w *workloadv1.Workload) *workloadv1.GatewayAddress {
	if w.GetTunnelProtocol() != workloadv1.TunnelProtocol_HBONE {
		return nil
	}
	return w.GetWaypoint()
}

// viaWaypoint sends the connection to a waypoint over HBONE, keeping dst
// (a Service VIP, or a workload's address) as the target, so the waypoint
// applies that Service's routes or that workload's policies. istiod-lite
// names the waypoint by its Service's hostname (as Istio does); an address
// may be the waypoint pod itself or a VIP. key names what is routed, for
// errors.
func (r *Router) viaWaypoint(wp *workloadv1.GatewayAddress, dst netip.AddrPort, key string) (proxy.Route, error) {
	port := uint16(wp.GetHboneMtlsPort())
	if port == 0 {
		port = hbone.Port
	}
	var wsvc *workloadv1.Service
	switch {
	case wp.GetHostname() != nil:
		h := wp.GetHostname()
		if wsvc = r.Store.ServiceByHostname(h.GetNamespace(), h.GetHostname()); wsvc == nil {
			return proxy.Route{}, fmt.Errorf("%s: waypoint %s/%s is not known (yet)", key, h.GetNamespace(), h.GetHostname())
		}
	case wp.GetAddress() != nil:
		ip, ok := netip.AddrFromSlice(wp.GetAddress().GetAddress())
		if !ok {
			return proxy.Route{}, fmt.Errorf("%s: waypoint address is malformed", key)
		}
		ip = ip.Unmap()
		if w := r.Store.WorkloadByIP(r.Network, ip); w != nil {
			id, err := workloadIdentity(w, r.TrustDomain)
			if err != nil {
				return proxy.Route{}, err
			}
			return proxy.Route{HBONE: true, Waypoint: true, Target: dst, Proxy: netip.AddrPortFrom(ip, port), Identity: id}, nil
		}
		if wsvc = r.Store.ServiceByIP(r.Network, ip); wsvc == nil {
			return proxy.Route{}, fmt.Errorf("%s: waypoint %s is not a known workload or service", key, ip)
		}
	default:
		return proxy.Route{}, fmt.Errorf("%s: waypoint has no address", key)
	}
	// Whatever name the waypoint is reached by, its endpoints are workloads.
	wkey := wsvc.GetNamespace() + "/" + wsvc.GetHostname()
	t, err := r.Balancer.Pick(wkey, port)
	if err != nil {
		return proxy.Route{}, fmt.Errorf("%s: waypoint: %w", key, err)
	}
	wip, ok := firstAddr(t.Workload)
	if !ok {
		return proxy.Route{}, fmt.Errorf("%s: waypoint endpoint has no address", key)
	}
	id, err := workloadIdentity(t.Workload, r.TrustDomain)
	if err != nil {
		return proxy.Route{}, err
	}
	uid := t.Workload.GetUid()
	r.Balancer.Acquire(uid)
	return proxy.Route{
		HBONE: true, Waypoint: true, Target: dst, Proxy: netip.AddrPortFrom(wip, t.Port), Identity: id,
		Done: func() { r.Balancer.Release(uid) },
	}, nil
}

func firstAddr(w *workloadv1.Workload) (netip.Addr, bool) {
	for _, b := range w.GetAddresses() {
		if ip, ok := netip.AddrFromSlice(b); ok {
			return ip.Unmap(), true
		}
	}
	return netip.Addr{}, false
}

func workloadIdentity(w *workloadv1.Workload, defaultTD string) (identity.Identity, error) {
	td := w.GetTrustDomain()
	if td == "" {
		td = defaultTD
	}
	sa := w.GetServiceAccount()
	if sa == "" {
		sa = "default"
	}
	id, err := identity.New(td, w.GetNamespace(), sa)
	if err != nil {
		return identity.Identity{}, fmt.Errorf("identity of workload %s: %w", w.GetUid(), err)
	}
	return id, nil
}

// Authorizer applies the destination workload's policies from the mesh
// state. A pod the state does not know (yet) is refused: nothing is allowed
// by default that a policy might deny.
type Authorizer struct {
	Store   *state.Store
	Network string
}

var _ proxy.Authorizer = (*Authorizer)(nil)

// Authorize implements proxy.Authorizer.
func (a *Authorizer) Authorize(in proxy.Inbound) (bool, string) {
	// The destination is one of the pod's own addresses.
	w := a.Store.WorkloadByIP(a.Network, in.Dest.Addr())
	if w == nil {
		return false, "destination workload unknown to the mesh state"
	}
	policies := a.Store.PoliciesFor(w)
	if !in.MTLS {
		if ok, pol := authz.PlaintextAllowed(w, in.Dest.Port(), policies); !ok {
			return false, "plaintext refused by PeerAuthentication (" + pol + ")"
		}
	}
	d := authz.Evaluate(authz.ConnInfo{
		SourceIdentity: in.Peer, SourceIP: in.Source.Addr(),
		DestinationIP: in.Dest.Addr(), DestinationPort: in.Dest.Port(), Destination: w,
	}, policies)
	return d.Allowed, d.String()
}
