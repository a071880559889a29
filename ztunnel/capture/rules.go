//go:build linux

package capture

import (
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// Chain names inside the ambit table.
const (
	chainPrerouting = "prerouting" // filter, prerouting, mangle priority: inbound TPROXY
	chainOutput     = "output"     // route, output, mangle priority: restore reply marks
	chainOutputNAT  = "output-nat" // nat, output, dstnat priority: outbound REDIRECT
)

// chainSpec is one base chain and its rules, each rule tagged with a comment.
type chainSpec struct {
	name     string
	typ      nftables.ChainType
	hook     nftables.ChainHook
	priority nftables.ChainPriority
	rules    []ruleSpec
}

type ruleSpec struct {
	id    string // short name, part of the comment
	exprs []expr.Any
}

// comment is what the rule carries as its nft comment: a stable id plus the
// configuration fingerprint.
func comment(id, fp string) string { return "ambit:" + id + ":" + fp }

func table() *nftables.Table {
	return &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
}

// ruleSet is the full set of chains for cfg (already validated).
func ruleSet(cfg Config) []chainSpec {
	mask := cfg.MarkMask

	pre := chainSpec{
		name: chainPrerouting, typ: nftables.ChainTypeFilter,
		hook: *nftables.ChainHookPrerouting, priority: *nftables.ChainPriorityMangle,
	}
	// Packets the ztunnel sends to the application from a spoofed source (the
	// transparent inbound delivery) loop back through lo still carrying the
	// socket mark: remember the connection, so its replies can be sent back to
	// the ztunnel rather than out of the pod.
	pre.rules = append(pre.rules, ruleSpec{"conn-mark", concat(
		markEq(mask, cfg.Mark),
		setCtMark(mask, cfg.ConnMark),
	)})
	pre.rules = append(pre.rules, ruleSpec{"lo", concat(ifnameEq(unix.NFT_META_IIFNAME, "lo"), accept())})
	for i, a := range cfg.ExcludeAddrs {
		pre.rules = append(pre.rules, ruleSpec{fmt.Sprintf("exclude-src-%d", i), concat(addrEq(a, true), accept())})
	}
	pre.rules = append(pre.rules,
		ruleSpec{"ztunnel-mark", concat(markEq(mask, cfg.Mark), accept())},
		ruleSpec{"hbone", concat(tcpDport(cfg.HBONEPort), accept())},
		// Connections set up before enrollment keep going to the application;
		// diverted connections find the ztunnel's socket by their 4-tuple.
		ruleSpec{"established", concat(ctStateIn(expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), accept())},
		// Only connection openings: a mid-stream packet conntrack picks up
		// loosely (a connection older than the rules) is never diverted.
		ruleSpec{"inbound", concat(
			tcpSYN(),
			tproxyTo(cfg.InboundPort),
			setMetaMark(mask, cfg.ConnMark),
			[]expr.Any{&expr.Counter{}},
			accept(),
		)},
	)

	out := chainSpec{
		name: chainOutput, typ: nftables.ChainTypeRoute,
		hook: *nftables.ChainHookOutput, priority: *nftables.ChainPriorityMangle,
		rules: []ruleSpec{
			// The application's replies on a connection the ztunnel opened
			// transparently: take the connection mark, so the policy route sends
			// them to lo (and to the ztunnel's socket), not out of the pod.
			{"restore-mark", concat(ctMarkEq(mask, cfg.ConnMark), restoreMark())},
		},
	}

	nat := chainSpec{
		name: chainOutputNAT, typ: nftables.ChainTypeNAT,
		hook: *nftables.ChainHookOutput, priority: *nftables.ChainPriorityNATDest,
	}
	nat.rules = append(nat.rules,
		ruleSpec{"lo", concat(ifnameEq(unix.NFT_META_OIFNAME, "lo"), accept())},
		ruleSpec{"ztunnel-mark", concat(markEq(mask, cfg.Mark), accept())},
		ruleSpec{"conn-mark", concat(markEq(mask, cfg.ConnMark), accept())},
	)
	for i, a := range cfg.ExcludeAddrs {
		nat.rules = append(nat.rules, ruleSpec{fmt.Sprintf("exclude-dst-%d", i), concat(addrEq(a, false), accept())})
	}
	nat.rules = append(nat.rules,
		// DNS is left alone (UDP is never captured; TCP 53 is excluded here).
		ruleSpec{"dns", concat(tcpDport(53), accept())},
		// Only connection openings, as for inbound: packets of a connection
		// opened before the rules get a conntrack entry in state new, and
		// redirecting one of those would reset the connection.
		ruleSpec{"outbound", concat(
			tcpSYN(),
			[]expr.Any{
				&expr.Counter{},
				&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(cfg.OutboundPort)},
				&expr.Redir{RegisterProtoMin: 1},
			},
		)},
	)
	return []chainSpec{pre, out, nat}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func accept() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}} }

// markEq: meta mark & mask == val.
func markEq(mask, val uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		maskReg(mask),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(val)},
	}
}

// ctMarkEq: ct mark & mask == val.
func ctMarkEq(mask, val uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		maskReg(mask),
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(val)},
	}
}

func maskReg(mask uint32) *expr.Bitwise {
	return &expr.Bitwise{
		SourceRegister: 1, DestRegister: 1, Len: 4,
		Mask: binaryutil.NativeEndian.PutUint32(mask),
		Xor:  binaryutil.NativeEndian.PutUint32(0),
	}
}

// setBits: reg1 = reg1 & ^mask | val.
func setBits(mask, val uint32) *expr.Bitwise {
	return &expr.Bitwise{
		SourceRegister: 1, DestRegister: 1, Len: 4,
		Mask: binaryutil.NativeEndian.PutUint32(^mask),
		Xor:  binaryutil.NativeEndian.PutUint32(val),
	}
}

// setCtMark: ct mark set ct mark & ^mask | val.
func setCtMark(mask, val uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		setBits(mask, val),
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1, SourceRegister: true},
	}
}

// setMetaMark: meta mark set meta mark & ^mask | val.
func setMetaMark(mask, val uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		setBits(mask, val),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// restoreMark: meta mark set ct mark.
func restoreMark() []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeyMARK, Register: 1},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1, SourceRegister: true},
	}
}

// ctStateIn: ct state & bits != 0.
func ctStateIn(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Key: expr.CtKeySTATE, Register: 1},
		&expr.Bitwise{
			SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits),
			Xor:  binaryutil.NativeEndian.PutUint32(0),
		},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

func ifnameEq(key expr.MetaKey, name string) []expr.Any {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

func l4protoTCP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

// tcpDport: meta l4proto tcp tcp dport == port.
func tcpDport(port uint16) []expr.Any {
	return concat(l4protoTCP(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
	})
}

// tcpSYN: meta l4proto tcp tcp flags & (fin|syn|rst|ack) == syn.
func tcpSYN() []expr.Any {
	const fin, syn, rst, ack = 0x01, 0x02, 0x04, 0x10
	return concat(l4protoTCP(), []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{fin | syn | rst | ack}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{syn}},
	})
}

// addrEq matches the packet's source (src) or destination address.
func addrEq(a netip.Addr, src bool) []expr.Any {
	a = a.Unmap()
	var proto byte = unix.NFPROTO_IPV4
	off := uint32(16) // IPv4 daddr
	if src {
		off = 12
	}
	if a.Is6() {
		proto = unix.NFPROTO_IPV6
		off = 24
		if src {
			off = 8
		}
	}
	raw := a.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(raw))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: raw},
	}
}

// tproxyTo: tproxy to :port (family-agnostic, for the inet table).
func tproxyTo(port uint16) []expr.Any {
	return []expr.Any{
		&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(port)},
		&expr.TProxy{Family: unix.NFPROTO_UNSPEC, TableFamily: byte(nftables.TableFamilyINet), RegPort: 1},
	}
}

// commentData encodes a rule comment the way the nft tool does, so that
// `nft list ruleset` shows it.
func commentData(s string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, s)
}

func commentOf(r *nftables.Rule) string {
	s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
	return s
}
