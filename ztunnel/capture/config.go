// Package capture programs, checks and removes the traffic redirection rules
// that send an enrolled pod's TCP traffic to the ztunnel's listeners inside the
// pod's own network namespace.
//
// Everything lives in one nftables table of our own (inet ambit) plus one
// policy-routing rule and one local route per address family, so removal is
// deleting that table and those two entries. The rule set follows the shape
// of Istio's in-pod redirection:
//
//   - inbound TCP (prerouting) is diverted with TPROXY to the inbound
//     plaintext listener (15006), except HBONE (15008), loopback, already
//     established connections and the ztunnel's own marked packets;
//   - outbound TCP (output, nat) is redirected to the outbound listener
//     (15001), except loopback, DNS, and packets from sockets carrying the
//     ztunnel's mark (0x539);
//   - packets of connections the ztunnel opens to the application with a
//     spoofed (original client) source get a connection mark, and the
//     application's replies are routed back to the ztunnel's transparent
//     socket through routing table 133.
//
// See docs/capture.md for the full rule listing.
package capture

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
)

// Names and numbers other packages share with the rules.
const (
	// TableName is the nftables table (family inet) holding every rule.
	TableName = "ambit"

	// OutboundPort is the ztunnel's outbound listener inside the pod.
	OutboundPort uint16 = 15001
	// InboundPort is the ztunnel's inbound plaintext listener (a TPROXY
	// target, so it needs IP_TRANSPARENT).
	InboundPort uint16 = 15006
	// HBONEPort is the ztunnel's HBONE listener; traffic to it is not
	// diverted.
	HBONEPort uint16 = 15008

	// Mark is the SO_MARK the ztunnel sets on every socket it dials from
	// inside a pod's namespace, so its own traffic is never recaptured. It is
	// Istio's value (1337).
	Mark uint32 = 0x539
	// ConnMark marks connections whose packets must be routed back to a local
	// (transparent) ztunnel socket: set as the conntrack mark of connections
	// the ztunnel opens with a spoofed source, restored as the packet mark on
	// the application's replies, and set on TPROXY-diverted packets.
	ConnMark uint32 = 0x111
	// MarkMask is the part of the packet and conntrack marks that the rules
	// read and write; other bits are left to the CNI and other software.
	MarkMask uint32 = 0xfff

	// RouteTable is the routing table holding "local default dev lo" routes.
	RouteTable = 133
	// RulePriority is the priority of the "fwmark ConnMark lookup RouteTable"
	// policy-routing rule (before the main table's 32766).
	RulePriority = 32764
)

// Config is the parameters of the rule set. The zero value is not usable;
// start from DefaultConfig.
type Config struct {
	OutboundPort uint16
	InboundPort  uint16
	HBONEPort    uint16
	Mark         uint32
	ConnMark     uint32
	MarkMask     uint32
	RouteTable   int
	RulePriority int
	// ExcludeAddrs are peer addresses whose traffic is never captured, in
	// either direction: typically the address the node SNATs kubelet health
	// probes to (Istio uses 169.254.7.127), so probes reach the application
	// directly.
	ExcludeAddrs []netip.Addr
}

// DefaultConfig is the rule set the ztunnel programs.
func DefaultConfig() Config {
	return Config{
		OutboundPort: OutboundPort,
		InboundPort:  InboundPort,
		HBONEPort:    HBONEPort,
		Mark:         Mark,
		ConnMark:     ConnMark,
		MarkMask:     MarkMask,
		RouteTable:   RouteTable,
		RulePriority: RulePriority,
	}
}

// Validate reports a configuration that cannot be programmed.
func (c Config) Validate() error {
	var errs []error
	if c.OutboundPort == 0 || c.InboundPort == 0 || c.HBONEPort == 0 {
		errs = append(errs, errors.New("ports must be non-zero"))
	}
	if c.OutboundPort == c.InboundPort || c.OutboundPort == c.HBONEPort || c.InboundPort == c.HBONEPort {
		errs = append(errs, fmt.Errorf("ports must differ (outbound %d, inbound %d, hbone %d)", c.OutboundPort, c.InboundPort, c.HBONEPort))
	}
	if c.MarkMask == 0 {
		errs = append(errs, errors.New("mark mask must be non-zero"))
	}
	if c.Mark == 0 || c.Mark&^c.MarkMask != 0 {
		errs = append(errs, fmt.Errorf("mark %#x must be non-zero and inside mask %#x", c.Mark, c.MarkMask))
	}
	if c.ConnMark == 0 || c.ConnMark&^c.MarkMask != 0 {
		errs = append(errs, fmt.Errorf("connection mark %#x must be non-zero and inside mask %#x", c.ConnMark, c.MarkMask))
	}
	if c.Mark == c.ConnMark {
		errs = append(errs, fmt.Errorf("mark and connection mark must differ (both %#x)", c.Mark))
	}
	// 253-255 are the kernel's default, main and local tables.
	if c.RouteTable <= 0 || c.RouteTable >= 253 && c.RouteTable <= 255 {
		errs = append(errs, fmt.Errorf("route table %d is reserved or invalid", c.RouteTable))
	}
	if c.RulePriority <= 0 || c.RulePriority >= 32766 {
		errs = append(errs, fmt.Errorf("rule priority %d must be in 1..32765 (before the main table)", c.RulePriority))
	}
	for _, a := range c.ExcludeAddrs {
		if !a.IsValid() || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("excluded address %q is invalid", a))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("capture config: %w", errors.Join(errs...))
	}
	return nil
}

// fingerprint identifies the rule set programmed for c; it is written into
// every rule's comment so that Check can tell current rules from stale ones
// left by an older ztunnel or another configuration.
func (c Config) fingerprint() string {
	h := sha256.New()
	fmt.Fprintf(h, "v%d|%d|%d|%d|%#x|%#x|%#x|%d|%d", ruleSetVersion,
		c.OutboundPort, c.InboundPort, c.HBONEPort, c.Mark, c.ConnMark, c.MarkMask, c.RouteTable, c.RulePriority)
	for _, a := range c.ExcludeAddrs {
		fmt.Fprintf(h, "|%s", a.Unmap())
	}
	return hex.EncodeToString(h.Sum(nil)[:4])
}

// ruleSetVersion changes whenever the shape of the rules changes, so that a
// restarted ztunnel sees rules written by an older one as stale.
const ruleSetVersion = 1
