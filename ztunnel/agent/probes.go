package agent

import (
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// probeTargets keeps the node's probe SNAT sets (capture.ApplyProbeSNAT)
// equal to the addresses of the enrolled pods, so kubelet probes reach
// them directly even under PeerAuthentication STRICT. A nil *probeTargets
// does nothing (no node namespace found: probes go through the ztunnel,
// as plain text).
type probeTargets struct {
	ns    *podns.NS
	log   *slog.Logger
	mu    sync.Mutex
	byPod map[string][]netip.Addr
}

// newProbeTargets programs the node's probe table, empty, in the namespace
// carrying nodeIP. Failing that, it logs why and returns nil.
func newProbeTargets(nodeIP netip.Addr, log *slog.Logger) *probeTargets {
	if !nodeIP.IsValid() {
		log.Warn("node address unknown (--node-ip): kubelet probes are not exempted from capture and fail under PeerAuthentication STRICT")
		return nil
	}
	ns, err := enroll.FindNodeNetns(nodeIP)
	if err != nil {
		log.Error("kubelet probes are not exempted from capture (they fail under PeerAuthentication STRICT)", "node_ip", nodeIP.String(), "error", err)
		return nil
	}
	if err := capture.ApplyProbeSNAT(ns, nil); err != nil {
		_ = ns.Close()
		log.Error("kubelet probes are not exempted from capture (they fail under PeerAuthentication STRICT)", "error", err)
		return nil
	}
	log.Info("kubelet probes to captured pods are source-NATed on the node", "netns", ns.Name(), "sources", capture.ProbeSources())
	return &probeTargets{ns: ns, log: log, byPod: map[string][]netip.Addr{}}
}

func (p *probeTargets) enrolled(pod enroll.Pod) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.byPod[pod.Key()] = slices.Clone(pod.IPs)
	if err := capture.AddProbeTargets(p.ns, pod.IPs); err != nil {
		p.log.Error("kubelet probes to the pod are not exempted from capture", "pod", pod.String(), "error", err)
	}
}

func (p *probeTargets) released(ref enroll.PodRef) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ips := p.byPod[ref.Key()]
	delete(p.byPod, ref.Key())
	// An address a newer pod already holds (IP reuse) stays.
	ips = slices.DeleteFunc(slices.Clone(ips), func(a netip.Addr) bool {
		for _, other := range p.byPod {
			if slices.Contains(other, a) {
				return true
			}
		}
		return false
	})
	if len(ips) == 0 {
		return
	}
	if err := capture.DeleteProbeTargets(p.ns, ips); err != nil {
		p.log.Error("probe source NAT not removed for a released pod", "pod", ref.Key(), "error", err)
	}
}

// close releases the namespace handle; the table stays, so probes keep
// passing while the ztunnel restarts (the next one reprograms it).
func (p *probeTargets) close() {
	if p != nil {
		_ = p.ns.Close()
	}
}
