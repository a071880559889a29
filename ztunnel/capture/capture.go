//go:build linux

package capture

import (
	"errors"
	"fmt"
	"net"
	"slices"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// Apply programs the rule set for cfg in the namespace ns. It is idempotent:
// the nftables part is replaced in a single atomic netlink transaction (add
// table, delete it, add it back with every chain and rule), so packets never
// see a half-written or empty rule set while an older one is replaced. The
// policy-routing rule and routes are added only where missing. They are
// programmed first, so that by the time anything is diverted the replies
// already have their way back.
func Apply(ns *podns.NS, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if ns == nil {
		return errors.New("capture: apply: network namespace is nil")
	}
	if err := applyRouting(ns, cfg); err != nil {
		return fmt.Errorf("capture: apply in %s: %w", ns.Name(), err)
	}
	if err := applyTable(ns, cfg); err != nil {
		return fmt.Errorf("capture: apply in %s: %w", ns.Name(), err)
	}
	return nil
}

// Remove deletes the rule set from ns: the ambit table, the policy-routing
// rule and the routes of table cfg.RouteTable. Anything already absent is not
// an error. Connections established through the ztunnel's listeners are not
// touched (closing those is the listeners' owner's job); new connections go
// directly to their destinations again.
func Remove(ns *podns.NS, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if ns == nil {
		return errors.New("capture: remove: network namespace is nil")
	}
	terr := removeTable(ns)
	rerr := removeRouting(ns, cfg)
	if err := errors.Join(terr, rerr); err != nil {
		return fmt.Errorf("capture: remove in %s: %w", ns.Name(), err)
	}
	return nil
}

func newNFT(ns *podns.NS) (*nftables.Conn, error) {
	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()), nftables.AsLasting())
	if err != nil {
		return nil, fmt.Errorf("nftables netlink socket: %w", err)
	}
	return c, nil
}

func applyTable(ns *podns.NS, cfg Config) error {
	c, err := newNFT(ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()

	t := table()
	_, err = c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	switch {
	case errors.Is(err, unix.ENOENT):
		// First enrollment: create the table exclusively. This path deletes
		// nothing, which keeps it cheap: after a transaction that deletes
		// objects, closing any nftables netlink socket waits for an RCU grace
		// period (the kernel flushes its pending destroy work on release), about
		// 10 ms here. If the table appeared meanwhile, replace it instead.
		c.CreateTable(t)
		addChains(c, t, cfg)
		if err := c.Flush(); err == nil {
			return nil
		} else if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("program nftables table inet %s: %w", TableName, err)
		}
	case err != nil:
		return fmt.Errorf("look up nftables table inet %s: %w", TableName, err)
	}
	// Replace: "add table" does not fail when it exists, so the delete that
	// follows always has something to delete, and the whole batch commits or
	// aborts as one transaction; packets see either the old rules or the new.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	addChains(c, t, cfg)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("replace nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// addChains queues the chains and rules of cfg into table t.
func addChains(c *nftables.Conn, t *nftables.Table, cfg Config) {
	fp := cfg.fingerprint()
	for _, cs := range ruleSet(cfg) {
		ch := c.AddChain(&nftables.Chain{
			Name:     cs.name,
			Table:    t,
			Type:     cs.typ,
			Hooknum:  nftables.ChainHookRef(cs.hook),
			Priority: nftables.ChainPriorityRef(cs.priority),
		})
		for _, r := range cs.rules {
			c.AddRule(&nftables.Rule{
				Table:    t,
				Chain:    ch,
				Exprs:    r.exprs,
				UserData: commentData(comment(r.id, fp)),
			})
		}
	}
}

func removeTable(ns *podns.NS) error {
	c, err := newNFT(ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	// Same trick as applyTable: add (no-op when present) then delete, in one
	// batch, so an absent table is not an error and there is no race between
	// checking and deleting.
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("delete nftables table inet %s: %w", TableName, err)
	}
	return nil
}

// families are the address families of the policy routing entries.
var families = []int{netlink.FAMILY_V4, netlink.FAMILY_V6}

func familyName(f int) string {
	if f == netlink.FAMILY_V6 {
		return "ipv6"
	}
	return "ipv4"
}

func newNetlink(ns *podns.NS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(netns.NsHandle(ns.Fd()), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("rtnetlink socket: %w", err)
	}
	return h, nil
}

func wantRule(cfg Config, family int) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = family
	r.Priority = cfg.RulePriority
	r.Table = cfg.RouteTable
	r.Mark = cfg.ConnMark
	mask := cfg.MarkMask
	r.Mask = &mask
	return r
}

func wantRoute(cfg Config, family, lo int) *netlink.Route {
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if family == netlink.FAMILY_V6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	return &netlink.Route{
		Family:    family,
		Table:     cfg.RouteTable,
		Type:      unix.RTN_LOCAL,
		Scope:     netlink.SCOPE_HOST,
		Dst:       dst,
		LinkIndex: lo,
	}
}

func isOurRule(r netlink.Rule, cfg Config) bool {
	return r.Table == cfg.RouteTable && r.Mark == cfg.ConnMark && r.Priority == cfg.RulePriority &&
		r.Mask != nil && *r.Mask == cfg.MarkMask
}

// isOurRoute: a local default route in our table, via lo (any link if lo < 0).
func isOurRoute(r netlink.Route, cfg Config, lo int) bool {
	if r.Table != cfg.RouteTable || r.Type != unix.RTN_LOCAL || lo >= 0 && r.LinkIndex != lo {
		return false
	}
	if r.Dst == nil {
		return true // the default route is reported without a destination
	}
	ones, _ := r.Dst.Mask.Size()
	return ones == 0
}

// retryDump runs a netlink dump again when the kernel reports it was
// interrupted by a concurrent change.
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var (
		out []T
		err error
	)
	for range 5 {
		out, err = f()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return out, err
		}
	}
	return out, err
}

// routingFamilies are the address families to program policy routing for:
// IPv4 always, IPv6 when the namespace has it (loopback carries ::1; it does
// not when IPv6 is disabled, and then IPv6 routes cannot be added to it).
func routingFamilies(h *netlink.Handle, lo netlink.Link) ([]int, error) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(lo, netlink.FAMILY_V6) })
	if err != nil {
		if errors.Is(err, unix.EAFNOSUPPORT) {
			return families[:1], nil
		}
		return nil, fmt.Errorf("list loopback ipv6 addresses: %w", err)
	}
	if len(addrs) == 0 {
		return families[:1], nil
	}
	return families, nil
}

// forRoutingFamilies opens ns's routing netlink and calls fn for every
// address family loopback has, saying whether our policy rule is there.
// applyRouting and checkRouting share it.
func forRoutingFamilies(ns *podns.NS, cfg Config, fn func(h *netlink.Handle, fam, loIndex int, hasRule bool) error) error {
	h, err := newNetlink(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find loopback: %w", err)
	}
	fams, err := routingFamilies(h, lo)
	if err != nil {
		return err
	}
	for _, fam := range fams {
		rules, err := retryDump(func() ([]netlink.Rule, error) { return h.RuleList(fam) })
		if err != nil {
			return fmt.Errorf("list %s rules: %w", familyName(fam), err)
		}
		hasRule := slices.ContainsFunc(rules, func(r netlink.Rule) bool { return isOurRule(r, cfg) })
		if err := fn(h, fam, lo.Attrs().Index, hasRule); err != nil {
			return err
		}
	}
	return nil
}

func applyRouting(ns *podns.NS, cfg Config) error {
	return forRoutingFamilies(ns, cfg, func(h *netlink.Handle, fam, loIndex int, hasRule bool) error {
		if !hasRule {
			if err := h.RuleAdd(wantRule(cfg, fam)); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add %s rule fwmark %#x/%#x lookup %d: %w", familyName(fam), cfg.ConnMark, cfg.MarkMask, cfg.RouteTable, err)
			}
		}
		if err := h.RouteReplace(wantRoute(cfg, fam, loIndex)); err != nil {
			return fmt.Errorf("add %s route local default dev lo table %d: %w", familyName(fam), cfg.RouteTable, err)
		}
		return nil
	})
}

func removeRouting(ns *podns.NS, cfg Config) error {
	h, err := newNetlink(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, fam := range families {
		rules, err := retryDump(func() ([]netlink.Rule, error) { return h.RuleList(fam) })
		if err != nil {
			if !errors.Is(err, unix.EAFNOSUPPORT) {
				errs = append(errs, fmt.Errorf("list %s rules: %w", familyName(fam), err))
			}
			continue
		}
		for _, r := range rules {
			if !isOurRule(r, cfg) {
				continue
			}
			if err := h.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete %s rule %v: %w", familyName(fam), r, err))
			}
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam, &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			if !errors.Is(err, unix.EAFNOSUPPORT) {
				errs = append(errs, fmt.Errorf("list %s routes of table %d: %w", familyName(fam), cfg.RouteTable, err))
			}
			continue
		}
		for _, r := range routes {
			if !isOurRoute(r, cfg, -1) {
				continue
			}
			if err := h.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete %s route %v: %w", familyName(fam), r, err))
			}
		}
	}
	return errors.Join(errs...)
}
