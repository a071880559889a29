//go:build linux

package capture

import (
	"errors"
	"fmt"
	"slices"
	"syscall"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// Status is what Check found in a namespace.
type Status struct {
	// Table reports whether the ambit nftables table exists.
	Table bool
	// Current reports whether everything Apply(cfg) programs is present and
	// matches cfg: every chain with its type, hook and priority, every rule
	// (compared through the comment carrying the rule id and the
	// configuration fingerprint), the policy-routing rule and the local
	// routes. Reconciliation re-applies when Table && !Current.
	Current bool
	// Problems describes each difference, for logs.
	Problems []string
}

// Present reports whether any part of a rule set is in place (so that an
// unenrolled pod needs Remove).
func (s Status) Present() bool { return s.Table }

// Check reports whether ns holds the rule set Apply(ns, cfg) programs. It
// reads the ruleset and routing state and changes nothing.
func Check(ns *podns.NS, cfg Config) (Status, error) {
	if err := cfg.Validate(); err != nil {
		return Status{}, err
	}
	if ns == nil {
		return Status{}, errors.New("capture: check: network namespace is nil")
	}
	var st Status
	if err := checkTable(ns, cfg, &st); err != nil {
		return Status{}, fmt.Errorf("capture: check in %s: %w", ns.Name(), err)
	}
	if err := checkRouting(ns, cfg, &st); err != nil {
		return Status{}, fmt.Errorf("capture: check in %s: %w", ns.Name(), err)
	}
	st.Current = st.Table && len(st.Problems) == 0
	return st, nil
}

func checkTable(ns *podns.NS, cfg Config, st *Status) error {
	c, err := newNFT(ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()

	if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err != nil {
		if errors.Is(err, syscall.ENOENT) {
			st.Problems = append(st.Problems, "table inet "+TableName+" missing")
			return nil
		}
		return fmt.Errorf("list table inet %s: %w", TableName, err)
	}
	st.Table = true

	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("list chains: %w", err)
	}
	have := map[string]*nftables.Chain{}
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			have[ch.Name] = ch
		}
	}
	fp := cfg.fingerprint()
	want := ruleSet(cfg)
	for _, cs := range want {
		ch, ok := have[cs.name]
		if !ok {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s missing", cs.name))
			continue
		}
		delete(have, cs.name)
		if ch.Type != cs.typ || ch.Hooknum == nil || *ch.Hooknum != cs.hook || ch.Priority == nil || *ch.Priority != cs.priority {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s has the wrong type, hook or priority", cs.name))
		}
		rules, err := c.GetRules(table(), ch)
		if err != nil {
			return fmt.Errorf("list rules of chain %s: %w", cs.name, err)
		}
		var got, exp []string
		for _, r := range rules {
			got = append(got, commentOf(r))
		}
		for _, r := range cs.rules {
			exp = append(exp, comment(r.id, fp))
		}
		if !slices.Equal(got, exp) {
			st.Problems = append(st.Problems, fmt.Sprintf("chain %s rules differ: have %q, want %q", cs.name, got, exp))
		}
	}
	for name := range have {
		st.Problems = append(st.Problems, fmt.Sprintf("unexpected chain %s", name))
	}
	return nil
}

func checkRouting(ns *podns.NS, cfg Config, st *Status) error {
	return forRoutingFamilies(ns, cfg, func(h *netlink.Handle, fam, loIndex int, hasRule bool) error {
		if !hasRule {
			st.Problems = append(st.Problems, fmt.Sprintf("%s rule fwmark %#x/%#x lookup %d missing", familyName(fam), cfg.ConnMark, cfg.MarkMask, cfg.RouteTable))
		}
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam, &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return fmt.Errorf("list %s routes of table %d: %w", familyName(fam), cfg.RouteTable, err)
		}
		if !slices.ContainsFunc(routes, func(r netlink.Route) bool { return isOurRoute(r, cfg, loIndex) }) {
			st.Problems = append(st.Problems, fmt.Sprintf("%s route local default dev lo table %d missing", familyName(fam), cfg.RouteTable))
		}
		return nil
	})
}
