package config

import (
	"crypto/x509"
	"fmt"
	"net/netip"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
)

// compileCluster reads a Cluster. The clusters describing Envoy's internal
// plumbing (main_internal, connect_originate) are accepted and not used:
// the Go waypoint does that natively.
func compileCluster(c *clusterv3.Cluster) (*Cluster, error) {
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("cluster %q: invalid: %w", c.GetName(), err)
	}
	out := &Cluster{Name: c.GetName(), ServiceName: c.GetName(), ConnectTimeout: 10 * time.Second,
		HealthyPanicThreshold: 50, Service: ServiceOfCluster(c.GetName())}
	if c.GetName() == MainInternal || c.GetName() == ConnectOriginate {
		return out, nil
	}
	path := fmt.Sprintf("cluster %q", c.GetName())
	// Accepted without effect: metadata (but ambit.destinations, see
	// compileDestinations), circuit_breakers other than
	// max_retries (no connection or request limits), the HTTP protocol options (the upstream protocol follows
	// the downstream one, as use_downstream_protocol_config says) and the
	// transport socket matches (an endpoint's address decides HBONE).
	if err := checkFields(c, path, "name", "type", "eds_cluster_config", "connect_timeout", "lb_policy",
		"outlier_detection", "typed_extension_protocol_options", "transport_socket_matches", "load_assignment",
		"common_lb_config", "circuit_breakers", "metadata", "per_connection_buffer_limit_bytes", "alt_stat_name",
		"least_request_lb_config", "cleanup_interval"); err != nil {
		return nil, err
	}
	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		out.EDS = true
		if sn := c.GetEdsClusterConfig().GetServiceName(); sn != "" {
			out.ServiceName = sn
		}
	case clusterv3.Cluster_STATIC:
		eps, err := compileAssignment(c.GetLoadAssignment())
		if err != nil {
			return nil, fmt.Errorf("%s.load_assignment: %w", path, err)
		}
		out.Static = eps
	default:
		return nil, fmt.Errorf("%s.type: %v is not supported by the waypoint (EDS, STATIC)", path, c.GetType())
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_LEAST_REQUEST:
		out.LeastRequest = true
		if n := c.GetLeastRequestLbConfig().GetChoiceCount(); n != nil && n.GetValue() != 2 {
			return nil, fmt.Errorf("%s.least_request_lb_config.choice_count: only 2 is supported", path)
		}
	case clusterv3.Cluster_ROUND_ROBIN:
	default:
		return nil, fmt.Errorf("%s.lb_policy: %v is not supported by the waypoint (ROUND_ROBIN, LEAST_REQUEST)", path, c.GetLbPolicy())
	}
	if d := c.GetConnectTimeout(); d != nil {
		out.ConnectTimeout = d.AsDuration()
	}
	out.MaxRetries = 3
	for _, th := range c.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() == corev3.RoutingPriority_DEFAULT && th.GetMaxRetries() != nil {
			out.MaxRetries = th.GetMaxRetries().GetValue()
		}
	}
	if cl := c.GetCommonLbConfig(); cl != nil {
		if err := checkFields(cl, path+".common_lb_config", "healthy_panic_threshold"); err != nil {
			return nil, err
		}
		if t := cl.GetHealthyPanicThreshold(); t != nil {
			out.HealthyPanicThreshold = t.GetValue()
		}
	}
	dests, err := compileDestinations(path, c.GetMetadata())
	if err != nil {
		return nil, err
	}
	out.Destinations = dests
	if od := c.GetOutlierDetection(); od != nil {
		o, err := compileOutlier(path+".outlier_detection", od)
		if err != nil {
			return nil, err
		}
		out.Outlier = o
	}
	return out, nil
}

func compileOutlier(path string, od *clusterv3.OutlierDetection) (*Outlier, error) {
	// Success-rate and failure-percentage detection need request volumes
	// and statistics the waypoint does not keep: refused when enforced.
	if err := checkFields(od, path, "consecutive_5xx", "interval", "base_ejection_time", "max_ejection_percent",
		"enforcing_consecutive_5xx", "consecutive_gateway_failure", "enforcing_consecutive_gateway_failure",
		"max_ejection_time", "enforcing_success_rate", "enforcing_failure_percentage", "split_external_local_origin_errors"); err != nil {
		return nil, err
	}
	if od.GetSplitExternalLocalOriginErrors() {
		return nil, fmt.Errorf("%s.split_external_local_origin_errors: not supported", path)
	}
	if v := od.GetEnforcingFailurePercentage(); v != nil && v.GetValue() != 0 {
		return nil, fmt.Errorf("%s.enforcing_failure_percentage: failure percentage detection is not supported", path)
	}
	u32 := func(v interface{ GetValue() uint32 }, isNil bool, def uint32) uint32 {
		if isNil {
			return def
		}
		return v.GetValue()
	}
	dur := func(d *durationpb.Duration, def time.Duration) time.Duration {
		if d == nil {
			return def
		}
		return d.AsDuration()
	}
	// Envoy's defaults.
	o := &Outlier{
		Consecutive5xx:                     u32(od.GetConsecutive_5Xx(), od.GetConsecutive_5Xx() == nil, 5),
		EnforcingConsecutive5xx:            u32(od.GetEnforcingConsecutive_5Xx(), od.GetEnforcingConsecutive_5Xx() == nil, 100),
		ConsecutiveGatewayFailure:          u32(od.GetConsecutiveGatewayFailure(), od.GetConsecutiveGatewayFailure() == nil, 5),
		EnforcingConsecutiveGatewayFailure: u32(od.GetEnforcingConsecutiveGatewayFailure(), od.GetEnforcingConsecutiveGatewayFailure() == nil, 0),
		Interval:                           dur(od.GetInterval(), 10*time.Second),
		BaseEjectionTime:                   dur(od.GetBaseEjectionTime(), 30*time.Second),
		MaxEjectionTime:                    dur(od.GetMaxEjectionTime(), 300*time.Second),
		MaxEjectionPercent:                 u32(od.GetMaxEjectionPercent(), od.GetMaxEjectionPercent() == nil, 10),
	}
	if o.MaxEjectionPercent > 100 {
		o.MaxEjectionPercent = 100
	}
	return o, nil
}

// compileAssignment reads a ClusterLoadAssignment's endpoints (every
// locality and priority together: the waypoint has no locality awareness).
// Unhealthy and draining endpoints are left out.
func compileAssignment(cla *endpointv3.ClusterLoadAssignment) ([]Endpoint, error) {
	if cla == nil {
		return nil, nil
	}
	if err := cla.Validate(); err != nil {
		return nil, fmt.Errorf("invalid: %w", err)
	}
	var out []Endpoint
	origPath := "" // the first original-destination endpoint
	for i, lle := range cla.GetEndpoints() {
		for j, lb := range lle.GetLbEndpoints() {
			path := fmt.Sprintf("endpoints[%d].lb_endpoints[%d]", i, j)
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNHEALTHY, corev3.HealthStatus_DRAINING, corev3.HealthStatus_TIMEOUT:
				continue
			}
			ep := lb.GetEndpoint()
			if ep == nil {
				return nil, fmt.Errorf("%s: no endpoint (named endpoints are not supported)", path)
			}
			e := Endpoint{Weight: 1}
			if w := lb.GetLoadBalancingWeight(); w != nil && w.GetValue() > 0 {
				e.Weight = w.GetValue()
			}
			addr := ep.GetAddress()
			switch {
			case addr.GetSocketAddress() != nil:
				sa := addr.GetSocketAddress()
				ip, err := netip.ParseAddr(sa.GetAddress())
				if err != nil {
					return nil, fmt.Errorf("%s: socket address %q: %w", path, sa.GetAddress(), err)
				}
				if sa.GetProtocol() != corev3.SocketAddress_TCP || sa.GetNamedPort() != "" {
					return nil, fmt.Errorf("%s: only TCP socket addresses with a port value are supported", path)
				}
				e.Address = netip.AddrPortFrom(ip.Unmap(), uint16(sa.GetPortValue()))
			case addr.GetEnvoyInternalAddress() != nil:
				ia := addr.GetEnvoyInternalAddress()
				if ia.GetServerListenerName() != ConnectOriginate {
					return nil, fmt.Errorf("%s: internal address for listener %q (only %s)", path, ia.GetServerListenerName(), ConnectOriginate)
				}
				if ia.GetEndpointId() == "" {
					// The original destination (Istio's "encap" cluster).
					e.OriginalDst, e.HBONE = true, true
					if origPath == "" {
						origPath = path
					}
					break
				}
				ap, err := netip.ParseAddrPort(ia.GetEndpointId())
				if err != nil {
					return nil, fmt.Errorf("%s: endpoint_id %q: %w", path, ia.GetEndpointId(), err)
				}
				e.Address, e.HBONE = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
			default:
				return nil, fmt.Errorf("%s: address kind not supported", path)
			}
			md := lb.GetMetadata().GetFilterMetadata()["ambit"].GetFields()
			if id := md["identity"].GetStringValue(); id != "" {
				parsed, err := identity.Parse(id)
				if err != nil {
					return nil, fmt.Errorf("%s: metadata ambit.identity: %w", path, err)
				}
				e.Identity = parsed
			}
			e.Workload, e.Namespace = md["workload"].GetStringValue(), md["namespace"].GetStringValue()
			out = append(out, e)
		}
	}
	// The original destination stands for every destination: mixed with
	// other endpoints, load balancing would send streams to hosts that are
	// not their target.
	if origPath != "" && len(out) > 1 {
		return nil, fmt.Errorf("%s: an original-destination endpoint (%s without endpoint_id) must be the only endpoint, not one of %d",
			origPath, ConnectOriginate, len(out))
	}
	return out, nil
}

// compileDestinations reads an original-destination cluster's
// filter_metadata ambit.destinations: a list of structs with the string
// fields address (an IP), identity (a SPIFFE id), workload and namespace.
// Other fields are ignored; a malformed entry refuses the cluster.
func compileDestinations(path string, md *corev3.Metadata) (map[netip.Addr]Destination, error) {
	v, ok := md.GetFilterMetadata()["ambit"].GetFields()["destinations"]
	if !ok {
		return nil, nil
	}
	path += `.metadata.filter_metadata["ambit"].destinations`
	list := v.GetListValue()
	if list == nil {
		return nil, fmt.Errorf("%s: not a list", path)
	}
	out := make(map[netip.Addr]Destination, len(list.GetValues()))
	for i, item := range list.GetValues() {
		ipath := fmt.Sprintf("%s[%d]", path, i)
		st := item.GetStructValue()
		if st == nil {
			return nil, fmt.Errorf("%s: not a struct", ipath)
		}
		str := func(name string) (string, error) {
			f, ok := st.GetFields()[name]
			if !ok {
				return "", nil
			}
			if _, isStr := f.GetKind().(*structpb.Value_StringValue); !isStr {
				return "", fmt.Errorf("%s.%s: not a string", ipath, name)
			}
			return f.GetStringValue(), nil
		}
		var d Destination
		var addr, id string
		var err error
		for _, f := range []struct {
			name string
			dst  *string
		}{{"address", &addr}, {"identity", &id}, {"workload", &d.Workload}, {"namespace", &d.Namespace}} {
			if *f.dst, err = str(f.name); err != nil {
				return nil, err
			}
		}
		ip, err := netip.ParseAddr(addr)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("%s.address: %q is not an IP address", ipath, addr)
		}
		ip = ip.Unmap()
		if id != "" {
			if d.Identity, err = identity.Parse(id); err != nil {
				return nil, fmt.Errorf("%s.identity: %w", ipath, err)
			}
		}
		if prev, dup := out[ip]; dup && prev != d {
			return nil, fmt.Errorf("%s: %s is listed twice with different identities or workloads", ipath, ip)
		}
		out[ip] = d
	}
	return out, nil
}

// compileSecret reads a validation context's trusted CA. Other secrets
// (the waypoint's own certificate comes from the CA, not SDS) are ignored.
func compileSecret(s *tlsv3.Secret) ([]*x509.Certificate, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("secret %q: invalid: %w", s.GetName(), err)
	}
	vc := s.GetValidationContext()
	if vc == nil {
		return nil, nil
	}
	ds := vc.GetTrustedCa()
	var pemBytes []byte
	switch {
	case ds.GetInlineBytes() != nil:
		pemBytes = ds.GetInlineBytes()
	case ds.GetInlineString() != "":
		pemBytes = []byte(ds.GetInlineString())
	default:
		return nil, fmt.Errorf("secret %q: trusted_ca must be inline", s.GetName())
	}
	roots, err := pemutil.ParseCertificates(pemBytes)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("secret %q: trusted_ca: no certificate (%v)", s.GetName(), err)
	}
	return roots, nil
}

// compileAddress keeps a workload's IPs and names; services carry nothing
// the waypoint's metrics need.
func compileAddress(a *workloadv1.Address) ([]addrEntry, error) {
	w := a.GetWorkload()
	if w == nil {
		return nil, nil
	}
	name := w.GetWorkloadName()
	if name == "" {
		name = w.GetName()
	}
	wl := &Workload{Name: name, Namespace: w.GetNamespace(), CanonicalName: w.GetCanonicalName(), CanonicalRevision: w.GetCanonicalRevision()}
	if w.GetServiceAccount() != "" {
		td := w.GetTrustDomain()
		if td == "" {
			td = identity.DefaultTrustDomain
		}
		wl.Principal = "spiffe://" + td + "/ns/" + w.GetNamespace() + "/sa/" + w.GetServiceAccount()
	}
	var out []addrEntry
	for i, raw := range w.GetAddresses() {
		ip, ok := netip.AddrFromSlice(raw)
		if !ok {
			return nil, fmt.Errorf("workload %q: address %d: %d bytes", w.GetUid(), i, len(raw))
		}
		out = append(out, addrEntry{ip: ip.Unmap(), w: wl})
	}
	return out, nil
}
