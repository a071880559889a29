package router

import (
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

// Retry conditions (RetryPolicy.retry_on), as Envoy names them.
const (
	RetryOn5xx                  = "5xx"
	RetryOnGatewayError         = "gateway-error"
	RetryOnReset                = "reset"
	RetryOnResetBeforeRequest   = "reset-before-request"
	RetryOnConnectFailure       = "connect-failure"
	RetryOnEnvoyRateLimited     = "envoy-ratelimited"
	RetryOnRetriable4xx         = "retriable-4xx"
	RetryOnRefusedStream        = "refused-stream"
	RetryOnRetriableStatusCodes = "retriable-status-codes"
	RetryOnRetriableHeaders     = "retriable-headers"
	RetryOnHTTP3PostConnect     = "http3-post-connect-failure"
	RetryOnGRPCCancelled        = "cancelled"
	RetryOnGRPCDeadlineExceeded = "deadline-exceeded"
	RetryOnGRPCInternal         = "internal"
	RetryOnGRPCResourceExhaust  = "resource-exhausted"
	RetryOnGRPCUnavailable      = "unavailable"
)

var knownRetryOn = map[string]bool{
	RetryOn5xx: true, RetryOnGatewayError: true, RetryOnReset: true, RetryOnResetBeforeRequest: true,
	RetryOnConnectFailure: true, RetryOnEnvoyRateLimited: true, RetryOnRetriable4xx: true,
	RetryOnRefusedStream: true, RetryOnRetriableStatusCodes: true, RetryOnRetriableHeaders: true,
	RetryOnHTTP3PostConnect: true, RetryOnGRPCCancelled: true, RetryOnGRPCDeadlineExceeded: true,
	RetryOnGRPCInternal: true, RetryOnGRPCResourceExhaust: true, RetryOnGRPCUnavailable: true,
}

// PreviousHostsPredicate is the only retry host predicate supported.
const PreviousHostsPredicate = "envoy.retry_host_predicates.previous_hosts"

const previousHostsType = "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"

// Envoy's retry back-off defaults.
const (
	DefaultRetryBaseInterval = 25 * time.Millisecond
)

// RetryPolicy is a compiled RetryPolicy. It is read-only.
type RetryPolicy struct {
	// RetryOn are the retry_on conditions, in configuration order.
	RetryOn []string
	// NumRetries is num_retries (1 when unset, as Envoy).
	NumRetries uint32
	// PerTryTimeout and PerTryIdleTimeout are 0 when unset (no per-try
	// limit).
	PerTryTimeout     time.Duration
	PerTryIdleTimeout time.Duration
	// RetriableStatusCodes apply with the retriable-status-codes condition.
	RetriableStatusCodes []uint32
	// BaseInterval and MaxInterval are the back-off (25ms and 10× the base
	// when unset).
	BaseInterval time.Duration
	MaxInterval  time.Duration
	// AvoidPreviousHosts is set by the previous_hosts retry host predicate;
	// HostSelectionRetryMaxAttempts is how many host picks to try then.
	AvoidPreviousHosts            bool
	HostSelectionRetryMaxAttempts int64
}

// Has reports whether cond is one of the retry_on conditions.
func (p *RetryPolicy) Has(cond string) bool {
	return p != nil && slices.Contains(p.RetryOn, cond)
}

// RetriableStatus reports whether an upstream response status calls for a
// retry under the policy's status-based conditions: 5xx (any 5xx),
// gateway-error (502, 503, 504), retriable-4xx (409) and
// retriable-status-codes.
func (p *RetryPolicy) RetriableStatus(status int) bool {
	if p == nil {
		return false
	}
	if p.Has(RetryOn5xx) && status >= 500 && status <= 599 {
		return true
	}
	if p.Has(RetryOnGatewayError) && (status == 502 || status == 503 || status == 504) {
		return true
	}
	if p.Has(RetryOnRetriable4xx) && status == 409 {
		return true
	}
	if p.Has(RetryOnRetriableStatusCodes) && status >= 0 && slices.Contains(p.RetriableStatusCodes, uint32(status)) {
		return true
	}
	return false
}

func compileRetryPolicy(path string, rp *routev3.RetryPolicy) (*RetryPolicy, error) {
	if rp == nil {
		return nil, nil
	}
	p := &RetryPolicy{NumRetries: 1, BaseInterval: DefaultRetryBaseInterval}
	for _, c := range strings.Split(rp.GetRetryOn(), ",") {
		c = strings.TrimSpace(c)
		if c == "" {
			continue
		}
		if !knownRetryOn[c] {
			return nil, fieldError(joinPath(path, "retry_on"), "unknown retry condition %q", c)
		}
		if !slices.Contains(p.RetryOn, c) {
			p.RetryOn = append(p.RetryOn, c)
		}
	}
	if rp.GetNumRetries() != nil {
		p.NumRetries = rp.GetNumRetries().GetValue()
	}
	var err error
	if p.PerTryTimeout, _, err = duration(joinPath(path, "per_try_timeout"), rp.GetPerTryTimeout()); err != nil {
		return nil, err
	}
	if p.PerTryIdleTimeout, _, err = duration(joinPath(path, "per_try_idle_timeout"), rp.GetPerTryIdleTimeout()); err != nil {
		return nil, err
	}
	p.RetriableStatusCodes = slices.Clone(rp.GetRetriableStatusCodes())
	if bo := rp.GetRetryBackOff(); bo != nil {
		base, set, err := duration(joinPath(path, "retry_back_off.base_interval"), bo.GetBaseInterval())
		if err != nil {
			return nil, err
		}
		if !set || base <= 0 {
			return nil, fieldError(joinPath(path, "retry_back_off.base_interval"), "must be greater than zero")
		}
		p.BaseInterval = base
		maxI, set, err := duration(joinPath(path, "retry_back_off.max_interval"), bo.GetMaxInterval())
		if err != nil {
			return nil, err
		}
		if set {
			if maxI < base {
				return nil, fieldError(joinPath(path, "retry_back_off.max_interval"), "%v is below base_interval %v", maxI, base)
			}
			p.MaxInterval = maxI
		}
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = 10 * p.BaseInterval
	}
	for i, hp := range rp.GetRetryHostPredicate() {
		tc := hp.GetTypedConfig()
		if hp.GetName() != PreviousHostsPredicate && (tc == nil || tc.GetTypeUrl() != previousHostsType) {
			return nil, fieldError(idx(joinPath(path, "retry_host_predicate"), i), "retry host predicate %q is not supported (only %s)", hp.GetName(), PreviousHostsPredicate)
		}
		if tc != nil && tc.GetTypeUrl() != previousHostsType {
			return nil, fieldError(joinPath(idx(joinPath(path, "retry_host_predicate"), i), "typed_config"), "type %q is not supported", tc.GetTypeUrl())
		}
		p.AvoidPreviousHosts = true
	}
	p.HostSelectionRetryMaxAttempts = rp.GetHostSelectionRetryMaxAttempts()
	if p.HostSelectionRetryMaxAttempts < 0 {
		return nil, fieldError(joinPath(path, "host_selection_retry_max_attempts"), "must not be negative")
	}
	return p, nil
}
