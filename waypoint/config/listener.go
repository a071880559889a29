package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbachttpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	httpinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/http_inspector/v3"
	originaldstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnetv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/ambit-mesh/ambit/waypoint/rbac"
	"github.com/ambit-mesh/ambit/waypoint/router"
)

// compiledListener is main_internal's chains and default chain.
type compiledListener struct {
	chains []*Chain
	def    *Chain
}

func (l *compiledListener) chainsOrNil() []*Chain {
	if l == nil {
		return nil
	}
	return l.chains
}

func (l *compiledListener) defaultOrNil() *Chain {
	if l == nil {
		return nil
	}
	return l.def
}

// compileListener compiles main_internal's filter chains. Other listeners
// (connect_terminate, connect_originate) describe what the Go waypoint does
// natively; they are decoded and validated but not interpreted.
func compileListener(l *listenerv3.Listener) (*compiledListener, error) {
	if err := l.Validate(); err != nil {
		return nil, fmt.Errorf("listener %q: invalid: %w", l.GetName(), err)
	}
	if l.GetName() != MainInternal {
		return &compiledListener{}, nil
	}
	path := fmt.Sprintf("listener %q", l.GetName())
	if err := checkFields(l, path, "name", "internal_listener", "listener_filters", "filter_chains",
		"stat_prefix", "use_original_dst", "traffic_direction", "continue_on_listener_filters_timeout",
		"listener_filters_timeout", "address", "metadata", "access_log", "default_filter_chain"); err != nil {
		return nil, err
	}
	for i, lf := range l.GetListenerFilters() {
		switch lf.GetTypedConfig().MessageName() {
		case messageName(&originaldstv3.OriginalDst{}), messageName(&httpinspectorv3.HttpInspector{}):
		default:
			return nil, fmt.Errorf("%s.listener_filters[%d] %q: filter type %q is not supported by the waypoint", path, i, lf.GetName(), lf.GetTypedConfig().GetTypeUrl())
		}
	}
	chains := make([]*Chain, 0, len(l.GetFilterChains()))
	for i, fc := range l.GetFilterChains() {
		c, err := compileChain(fmt.Sprintf("%s.filter_chains[%d]", path, i), fc)
		if err != nil {
			return nil, err
		}
		chains = append(chains, c)
	}
	out := &compiledListener{chains: chains}
	if dfc := l.GetDefaultFilterChain(); dfc != nil {
		c, err := compileChain(path+".default_filter_chain", dfc)
		if err != nil {
			return nil, err
		}
		if c.Port != 0 || len(c.Prefixes) > 0 || len(c.AppProtocols) > 0 {
			return nil, fmt.Errorf("%s.default_filter_chain: filter_chain_match is not allowed", path)
		}
		out.def = c
	}
	return out, nil
}

func compileChain(path string, fc *listenerv3.FilterChain) (*Chain, error) {
	if err := checkFields(fc, path, "name", "filter_chain_match", "filters", "metadata"); err != nil {
		return nil, err
	}
	c := &Chain{Name: fc.GetName()}
	if m := fc.GetFilterChainMatch(); m != nil {
		if err := checkFields(m, path+".filter_chain_match", "destination_port", "prefix_ranges", "application_protocols", "transport_protocol"); err != nil {
			return nil, err
		}
		if tp := m.GetTransportProtocol(); tp != "" && tp != "raw_buffer" {
			return nil, fmt.Errorf("%s.filter_chain_match.transport_protocol: %q is not supported by the waypoint (plaintext inside HBONE only)", path, tp)
		}
		c.Port = m.GetDestinationPort().GetValue()
		for j, r := range m.GetPrefixRanges() {
			p, err := cidr(r)
			if err != nil {
				return nil, fmt.Errorf("%s.filter_chain_match.prefix_ranges[%d]: %w", path, j, err)
			}
			c.Prefixes = append(c.Prefixes, p)
		}
		for _, ap := range m.GetApplicationProtocols() {
			if ap != "http/1.1" && ap != "h2c" && ap != "http/1.0" {
				return nil, fmt.Errorf("%s.filter_chain_match.application_protocols: %q is not supported (http/1.1, h2c)", path, ap)
			}
		}
		c.AppProtocols = m.GetApplicationProtocols()
	}
	filters := fc.GetFilters()
	if len(filters) == 0 {
		return nil, fmt.Errorf("%s: no filters", path)
	}
	var rbacs []RBACFilter
	for i, f := range filters {
		fpath := fmt.Sprintf("%s.filters[%d] %q", path, i, f.GetName())
		last := i == len(filters)-1
		switch f.GetTypedConfig().MessageName() {
		case messageName(&rbacnetv3.RBAC{}):
			cfg := &rbacnetv3.RBAC{}
			if err := unmarshal(f.GetTypedConfig(), cfg); err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			if err := checkFields(cfg, fpath, "rules", "stat_prefix", "shadow_rules_stat_prefix"); err != nil {
				return nil, err
			}
			rf, err := compileRBAC(cfg.GetRules())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			rbacs = append(rbacs, rf)
		case messageName(&tcpproxyv3.TcpProxy{}):
			if !last {
				return nil, fmt.Errorf("%s: tcp_proxy must be the last filter", fpath)
			}
			cfg := &tcpproxyv3.TcpProxy{}
			if err := unmarshal(f.GetTypedConfig(), cfg); err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			if err := checkFields(cfg, fpath, "stat_prefix", "cluster", "idle_timeout", "access_log", "max_connect_attempts"); err != nil {
				return nil, err
			}
			c.TCP = &TCPChain{StatPrefix: cfg.GetStatPrefix(), Cluster: cfg.GetCluster(), RBAC: rbacs, MaxConnectAttempts: 1}
			if n := cfg.GetMaxConnectAttempts(); n != nil && n.GetValue() > 1 {
				c.TCP.MaxConnectAttempts = n.GetValue()
			}
			c.TCP.IdleTimeout = time.Hour
			if d := cfg.GetIdleTimeout(); d != nil {
				c.TCP.IdleTimeout = d.AsDuration()
			}
		case messageName(&hcmv3.HttpConnectionManager{}):
			if !last || len(rbacs) > 0 {
				return nil, fmt.Errorf("%s: the HTTP connection manager must be the only filter", fpath)
			}
			h, err := compileHCM(fpath, f.GetTypedConfig())
			if err != nil {
				return nil, err
			}
			c.HTTP = h
		default:
			return nil, fmt.Errorf("%s: filter type %q is not supported by the waypoint", fpath, f.GetTypedConfig().GetTypeUrl())
		}
	}
	if c.TCP == nil && c.HTTP == nil {
		return nil, fmt.Errorf("%s: ends with neither tcp_proxy nor an HTTP connection manager", path)
	}
	if c.TCP != nil && len(c.AppProtocols) > 0 {
		return nil, fmt.Errorf("%s: application_protocols on a TCP chain are not supported", path)
	}
	return c, nil
}

func compileHCM(path string, a *anypb.Any) (*HTTPChain, error) {
	cfg := &hcmv3.HttpConnectionManager{}
	if err := unmarshal(a, cfg); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// Fields that only tune Envoy's own behaviour (timeouts, stats, codec
	// options, tracing and logging sinks) are accepted; the Go waypoint has
	// its own equivalents.
	if err := checkFields(cfg, path, "codec_type", "stat_prefix", "rds", "route_config", "http_filters",
		"normalize_path", "merge_slashes", "use_remote_address", "path_with_escaped_slashes_action",
		"stream_idle_timeout", "request_timeout", "request_headers_timeout", "drain_timeout", "delayed_close_timeout",
		"common_http_protocol_options", "http_protocol_options", "http2_protocol_options",
		"tracing", "access_log", "generate_request_id", "preserve_external_request_id",
		"forward_client_cert_details", "set_current_client_cert_details", "xff_num_trusted_hops",
		"server_name", "server_header_transformation", "upgrade_configs", "strip_any_host_port",
		"strip_matching_host_port", "internal_address_config"); err != nil {
		return nil, err
	}
	var upgrades []string
	for i, u := range cfg.GetUpgradeConfigs() {
		if !strings.EqualFold(u.GetUpgradeType(), "websocket") || len(u.GetFilters()) > 0 || (u.GetEnabled() != nil && !u.GetEnabled().GetValue()) {
			return nil, fmt.Errorf("%s.upgrade_configs[%d]: only an enabled websocket upgrade without filters is supported", path, i)
		}
		upgrades = append(upgrades, "websocket")
	}
	switch cfg.GetPathWithEscapedSlashesAction() {
	case hcmv3.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT, hcmv3.HttpConnectionManager_KEEP_UNCHANGED:
	default:
		return nil, fmt.Errorf("%s.path_with_escaped_slashes_action: %v is not supported by the waypoint", path, cfg.GetPathWithEscapedSlashesAction())
	}
	if cfg.GetMergeSlashes() {
		return nil, fmt.Errorf("%s.merge_slashes: not supported by the waypoint", path)
	}
	h := &HTTPChain{StatPrefix: cfg.GetStatPrefix(), NormalizePath: cfg.GetNormalizePath().GetValue(),
		StripAnyHostPort: cfg.GetStripAnyHostPort(), StripMatchingHostPort: cfg.GetStripMatchingHostPort(), Upgrades: upgrades}
	h.StreamIdleTimeout = 5 * time.Minute
	if d := cfg.GetStreamIdleTimeout(); d != nil {
		h.StreamIdleTimeout = d.AsDuration()
	}
	switch {
	case cfg.GetRds() != nil:
		h.RouteName = cfg.GetRds().GetRouteConfigName()
	case cfg.GetRouteConfig() != nil:
		t, err := router.Compile(cfg.GetRouteConfig())
		if err != nil {
			return nil, fmt.Errorf("%s.route_config: %w", path, err)
		}
		h.Inline = t
	default:
		return nil, fmt.Errorf("%s: neither rds nor route_config", path)
	}
	filters := cfg.GetHttpFilters()
	for i, f := range filters {
		fpath := fmt.Sprintf("%s.http_filters[%d] %q", path, i, f.GetName())
		switch f.GetTypedConfig().MessageName() {
		case messageName(&rbachttpv3.RBAC{}):
			rc := &rbachttpv3.RBAC{}
			if err := unmarshal(f.GetTypedConfig(), rc); err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			if err := checkFields(rc, fpath, "rules", "rules_stat_prefix", "shadow_rules_stat_prefix", "track_per_rule_stats"); err != nil {
				return nil, err
			}
			rf, err := compileRBAC(rc.GetRules())
			if err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			h.RBAC = append(h.RBAC, rf)
		case messageName(&routerv3.Router{}):
			if i != len(filters)-1 {
				return nil, fmt.Errorf("%s: the router must be the last HTTP filter", fpath)
			}
		default:
			return nil, fmt.Errorf("%s: HTTP filter type %q is not supported by the waypoint", fpath, f.GetTypedConfig().GetTypeUrl())
		}
	}
	if len(filters) == 0 || filters[len(filters)-1].GetTypedConfig().MessageName() != messageName(&routerv3.Router{}) {
		return nil, fmt.Errorf("%s: http_filters must end with envoy.filters.http.router", path)
	}
	return h, nil
}

// compileRBAC compiles a filter's rules; a filter without rules allows
// everything, as Envoy's does.
func compileRBAC(rules *rbacv3.RBAC) (RBACFilter, error) {
	if rules == nil {
		return RBACFilter{}, nil
	}
	e, err := rbac.Compile(rules)
	if err != nil {
		return RBACFilter{}, fmt.Errorf("rules: %w", err)
	}
	return RBACFilter{Engine: e}, nil
}

func messageName(m proto.Message) protoreflect.FullName {
	return m.ProtoReflect().Descriptor().FullName()
}

func unmarshal(a *anypb.Any, m proto.Message) error {
	if a == nil {
		return fmt.Errorf("no typed_config")
	}
	if err := a.UnmarshalTo(m); err != nil {
		return fmt.Errorf("typed_config: %w", err)
	}
	return nil
}

// checkFields refuses any set field of m outside allowed, and unknown
// fields, so a configuration is never half-honoured.
func checkFields(m proto.Message, path string, allowed ...string) error {
	var err error
	r := m.ProtoReflect()
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(allowed, string(fd.Name())) {
			err = fmt.Errorf("%s.%s: field is not supported by the waypoint", path, fd.Name())
			return false
		}
		return true
	})
	if err == nil && len(r.GetUnknown()) > 0 {
		err = fmt.Errorf("%s: unknown fields (newer schema?) are not supported by the waypoint", path)
	}
	return err
}

func cidr(r *corev3.CidrRange) (netip.Prefix, error) {
	a, err := netip.ParseAddr(r.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("address %q: %w", r.GetAddressPrefix(), err)
	}
	bits := a.BitLen()
	if r.GetPrefixLen() != nil {
		bits = int(r.GetPrefixLen().GetValue())
	}
	p, err := a.Unmap().Prefix(bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("prefix %s/%d: %w", a, bits, err)
	}
	return p, nil
}
