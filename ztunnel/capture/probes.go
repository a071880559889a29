//go:build linux

package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// Kubelet probes are plain text from the node itself. Under
// PeerAuthentication STRICT the in-pod rules would hand them to the
// inbound plaintext listener, which refuses them, and every probed pod
// would go unready. So, as Istio does, the node source-NATs connections it
// opens to captured pods to a link-local address, and the in-pod rules let
// that address through untouched (Config.ExcludeAddrs = ProbeSources()).
// Only connections from the node's own sockets are rewritten: traffic
// forwarded from other nodes or pods keeps its source and stays captured.

// ProbeTableName is the nftables table (family inet) the node's namespace
// holds: two sets of captured pod addresses and one SNAT chain.
const ProbeTableName = "ambit-probes"

// Istio's probe source addresses, so policies and dashboards written for
// Istio recognise them.
var (
	ProbeSourceV4 = netip.MustParseAddr("169.254.7.127")
	ProbeSourceV6 = netip.MustParseAddr("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
)

// ProbeSources are the addresses node-originated connections to captured
// pods carry as their source; put them in Config.ExcludeAddrs.
func ProbeSources() []netip.Addr { return []netip.Addr{ProbeSourceV4, ProbeSourceV6} }

const (
	probeSetV4 = "pods-v4"
	probeSetV6 = "pods-v6"
)

func probeTable() *nftables.Table {
	return &nftables.Table{Name: ProbeTableName, Family: nftables.TableFamilyINet}
}

func probeSets(t *nftables.Table) (v4, v6 *nftables.Set) {
	return &nftables.Set{Table: t, Name: probeSetV4, KeyType: nftables.TypeIPAddr},
		&nftables.Set{Table: t, Name: probeSetV6, KeyType: nftables.TypeIP6Addr}
}

// ApplyProbeSNAT programs the probe table in the node's namespace ns,
// replacing any previous one in one transaction, with pods as the captured
// addresses. Call it once at start (pods: every captured pod of the node),
// then AddProbeTargets and DeleteProbeTargets as pods come and go.
func ApplyProbeSNAT(ns *podns.NS, pods []netip.Addr) error {
	return probeConn(ns, func(c *nftables.Conn) error {
		t := probeTable()
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
		v4, v6 := probeSets(t)
		e4, e6 := probeElements(pods)
		if err := c.AddSet(v4, e4); err != nil {
			return fmt.Errorf("set %s: %w", probeSetV4, err)
		}
		if err := c.AddSet(v6, e6); err != nil {
			return fmt.Errorf("set %s: %w", probeSetV6, err)
		}
		ch := c.AddChain(&nftables.Chain{
			Name: "postrouting", Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
		})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: probeSNATRule(v4, ProbeSourceV4), UserData: commentData("ambit:probe-snat-v4")})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: probeSNATRule(v6, ProbeSourceV6), UserData: commentData("ambit:probe-snat-v6")})
		if err := c.Flush(); err != nil {
			return fmt.Errorf("program table inet %s: %w", ProbeTableName, err)
		}
		return nil
	})
}

// AddProbeTargets adds captured pod addresses; present ones are kept.
func AddProbeTargets(ns *podns.NS, pods []netip.Addr) error {
	return changeProbeTargets(ns, pods, false)
}

// DeleteProbeTargets removes pod addresses; absent ones are not an error.
func DeleteProbeTargets(ns *podns.NS, pods []netip.Addr) error {
	return changeProbeTargets(ns, pods, true)
}

func changeProbeTargets(ns *podns.NS, pods []netip.Addr, del bool) error {
	return probeConn(ns, func(c *nftables.Conn) error {
		v4, v6 := probeSets(probeTable())
		e4, e6 := probeElements(pods)
		for _, s := range []struct {
			set   *nftables.Set
			elems []nftables.SetElement
		}{{v4, e4}, {v6, e6}} {
			if len(s.elems) == 0 {
				continue
			}
			// Adding never fails on a present element; deleting an absent
			// one would abort the batch, so a delete follows an add.
			if err := c.SetAddElements(s.set, s.elems); err != nil {
				return err
			}
			if del {
				if err := c.SetDeleteElements(s.set, s.elems); err != nil {
					return err
				}
			}
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("update sets of inet %s: %w", ProbeTableName, err)
		}
		return nil
	})
}

// ProbeTargets lists the addresses in the probe table's sets, sorted.
func ProbeTargets(ns *podns.NS) ([]netip.Addr, error) {
	var out []netip.Addr
	err := probeConn(ns, func(c *nftables.Conn) error {
		v4, v6 := probeSets(probeTable())
		for _, set := range []*nftables.Set{v4, v6} {
			elems, err := c.GetSetElements(set)
			if err != nil {
				return fmt.Errorf("list set %s: %w", set.Name, err)
			}
			for _, e := range elems {
				if a, ok := netip.AddrFromSlice(e.Key); ok {
					out = append(out, a)
				}
			}
		}
		return nil
	})
	slices.SortFunc(out, netip.Addr.Compare)
	return out, err
}

// RemoveProbeSNAT deletes the probe table; an absent table is not an error.
func RemoveProbeSNAT(ns *podns.NS) error {
	return probeConn(ns, func(c *nftables.Conn) error {
		t := probeTable()
		c.AddTable(t)
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("delete table inet %s: %w", ProbeTableName, err)
		}
		return nil
	})
}

// probeConn runs fn on an nftables connection in the node's namespace.
func probeConn(ns *podns.NS, fn func(c *nftables.Conn) error) error {
	if ns == nil {
		return errors.New("capture: probe snat: node network namespace is nil")
	}
	c, err := newNFT(ns)
	if err != nil {
		return fmt.Errorf("capture: probe snat: %w", err)
	}
	defer c.CloseLasting()
	if err := fn(c); err != nil {
		return fmt.Errorf("capture: probe snat in %s: %w", ns.Name(), err)
	}
	return nil
}

func probeElements(pods []netip.Addr) (v4, v6 []nftables.SetElement) {
	seen := map[netip.Addr]bool{}
	for _, a := range pods {
		a = a.Unmap()
		if !a.IsValid() || a.Zone() != "" || seen[a] {
			continue
		}
		seen[a] = true
		if a.Is4() {
			v4 = append(v4, nftables.SetElement{Key: a.AsSlice()})
		} else {
			v6 = append(v6, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	return v4, v6
}

// probeSNATRule: meta nfproto F meta l4proto tcp fib saddr type local
// ip(6) daddr @set counter snat ip(6) to src.
func probeSNATRule(set *nftables.Set, src netip.Addr) []expr.Any {
	proto, daddrOff := byte(unix.NFPROTO_IPV4), uint32(16)
	if src.Is6() {
		proto, daddrOff = unix.NFPROTO_IPV6, 24
	}
	raw := src.AsSlice()
	return concat(
		[]expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		},
		l4protoTCP(),
		[]expr.Any{
			// From a socket of the node itself (kubelet), not forwarded.
			&expr.Fib{Register: 1, FlagSADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddrOff, Len: uint32(len(raw))},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
			&expr.Counter{},
			&expr.Immediate{Register: 1, Data: raw},
			&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(proto), RegAddrMin: 1, RegAddrMax: 1},
		},
	)
}
