package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

type report struct {
	Config           config `json:"-"`
	Settings         string
	Start, End       time.Time
	Load1Before      string
	Load1After       string
	ZtunnelIdle      map[string]memSample
	ZtunnelAfterHTTP map[string]memSample
	ZtunnelAfterTCP  map[string]memSample
	HTTP             []*result
	TCP              []*result
}

// stats is the mean, min and max of a few values.
type stats struct{ mean, min, max float64 }

func summarize(v []float64) stats {
	if len(v) == 0 {
		return stats{math.NaN(), math.NaN(), math.NaN()}
	}
	s := stats{min: math.Inf(1), max: math.Inf(-1)}
	for _, x := range v {
		s.mean += x / float64(len(v))
		s.min, s.max = math.Min(s.min, x), math.Max(s.max, x)
	}
	return s
}

// f formats with the given precision: "mean (min-max)" when they differ.
func (s stats) f(prec int) string {
	m := fmt.Sprintf("%.*f", prec, s.mean)
	lo, hi := fmt.Sprintf("%.*f", prec, s.min), fmt.Sprintf("%.*f", prec, s.max)
	if lo == hi {
		return m
	}
	return fmt.Sprintf("%s (%s–%s)", m, lo, hi)
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

// netCPU is, per node, the ztunnel CPU seconds of a mesh run minus the
// background rate seen during the same round's direct run (which does not
// go through ztunnel) over the mesh run's duration.
func netCPU(mesh, direct *result) map[string]float64 {
	n := map[string]float64{}
	for node, c := range mesh.ZtunnelCPU {
		bg := 0.0
		if direct != nil && direct.Seconds > 0 {
			bg = direct.ZtunnelCPU[node] / direct.Seconds * mesh.Seconds
		}
		n[node] = c - bg
	}
	return n
}

func pair(rs []*result, mode string, round int) *result {
	for _, r := range rs {
		if r.Mode == mode && r.Round == round {
			return r
		}
	}
	return nil
}

func (r *report) print(w io.Writer, z *ztunnels) {
	c := r.Config
	cn, sn := c.clientNode, c.serverNode
	fmt.Fprintf(w, "\n### meshbench, %s (%s)\n\n", r.Start.UTC().Format("2006-01-02 15:04 MST"), r.End.Sub(r.Start).Round(time.Second))
	fmt.Fprintf(w, "Client pods on %s, server pods on %s (different nodes). fortio: HTTP/1.1, %d B request bodies echoed back, %d req/s fixed, %d keep-alive connections, %s per run, %d rounds of direct then mesh, to the server pod's IP. iperf3: one TCP stream, %s per run, %d rounds. Load average (1/5/15 min) before %s, after %s.\n\n",
		cn, sn, c.payload, c.qps, c.conns, c.duration, c.rounds, c.iperfTime, c.iperfRounds, r.Load1Before, r.Load1After)

	fmt.Fprintf(w, "| run | path | req/s | requests | p50 ms | p90 ms | p99 ms | p99.9 ms | ztunnel CPU s (%s / %s) | fortio CPU s (client + server pods) | machine CPU busy |\n", cn, sn)
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, x := range r.HTTP {
		h := x.HTTP
		fmt.Fprintf(w, "| %d | %s | %.0f | %d | %.3f | %.3f | %.3f | %.3f | %.2f / %.2f | %.2f | %.0f%% |\n", x.Round, x.Mode, h.QPS, h.Requests,
			h.P50*1e3, h.P90*1e3, h.P99*1e3, h.P999*1e3, x.ZtunnelCPU[cn], x.ZtunnelCPU[sn], x.AppCPU, x.MachineCPU*100)
	}

	// Summary over rounds.
	lat := func(mode string, get func(*fortioResult) float64) stats {
		var v []float64
		for _, x := range r.HTTP {
			if x.Mode == mode {
				v = append(v, get(x.HTTP)*1e3)
			}
		}
		return summarize(v)
	}
	added := func(get func(*fortioResult) float64) stats {
		var v []float64
		for round := 1; round <= c.rounds; round++ {
			m, d := pair(r.HTTP, "mesh", round), pair(r.HTTP, "direct", round)
			if m != nil && d != nil {
				v = append(v, (get(m.HTTP)-get(d.HTTP))*1e3)
			}
		}
		return summarize(v)
	}
	var perK, perKClient, perKServer, gross, bgRate, sysShare, appD, appM, totD, totM, totAdded []float64
	sysc, ctx := map[string][]float64{}, map[string][]float64{}
	for round := 1; round <= c.rounds; round++ {
		m, d := pair(r.HTTP, "mesh", round), pair(r.HTTP, "direct", round)
		if m == nil {
			continue
		}
		n := netCPU(m, d)
		k := float64(m.HTTP.Requests) / 1000
		perK = append(perK, (n[cn]+n[sn])/k)
		perKClient = append(perKClient, n[cn]/k)
		perKServer = append(perKServer, n[sn]/k)
		gross = append(gross, (m.ZtunnelCPU[cn]+m.ZtunnelCPU[sn])/k)
		for _, node := range []string{cn, sn} {
			sysc[node] = append(sysc[node], float64(m.ZtunnelSyscalls[node])/float64(m.HTTP.Requests))
			ctx[node] = append(ctx[node], float64(m.ZtunnelCtxSw[node])/float64(m.HTTP.Requests))
		}
		if t := m.ZtunnelCPU[cn] + m.ZtunnelCPU[sn]; t > 0 {
			sysShare = append(sysShare, (m.ZtunnelSys[cn]+m.ZtunnelSys[sn])/t*100)
		}
		if d != nil {
			bgRate = append(bgRate, (d.ZtunnelCPU[cn]+d.ZtunnelCPU[sn])/d.Seconds)
			kd := float64(d.HTTP.Requests) / 1000
			appD, appM = append(appD, d.AppCPU/kd), append(appM, m.AppCPU/k)
			// The direct run's ztunnel CPU is background, not data path.
			td, tm := d.AppCPU/kd, m.AppCPU/k+(n[cn]+n[sn])/k
			totD, totM, totAdded = append(totD, td), append(totM, tm), append(totAdded, tm-td)
		}
	}
	p50, p99 := func(h *fortioResult) float64 { return h.P50 }, func(h *fortioResult) float64 { return h.P99 }
	fmt.Fprintf(w, "\nSummary (mean over rounds, range in brackets):\n\n")
	fmt.Fprintln(w, "| figure | direct | mesh | added by the mesh (per round: mesh − direct) |")
	fmt.Fprintln(w, "| --- | --- | --- | --- |")
	fmt.Fprintf(w, "| p50 latency, ms | %s | %s | %s |\n", lat("direct", p50).f(3), lat("mesh", p50).f(3), added(p50).f(3))
	fmt.Fprintf(w, "| p99 latency, ms | %s | %s | %s |\n", lat("direct", p99).f(3), lat("mesh", p99).f(3), added(p99).f(3))
	fmt.Fprintf(w, "| ztunnel CPU s per 1,000 requests (= vCPU at 1,000 req/s), both ztunnels, background subtracted | – | %s | client side (%s) %s, server side (%s) %s |\n",
		summarize(perK).f(3), cn, summarize(perKClient).f(3), sn, summarize(perKServer).f(3))
	fmt.Fprintf(w, "| the same without subtracting the background | – | %s | background during direct runs: %s vCPU (both ztunnels) |\n",
		summarize(gross).f(3), summarize(bgRate).f(3))
	fmt.Fprintf(w, "| share of the ztunnels' CPU time spent in the kernel (stime) during mesh runs | – | %s%% | |\n", summarize(sysShare).f(0))
	fmt.Fprintf(w, "| per request, ztunnel on %s / on %s: read+write system calls (/proc/<pid>/io syscr+syscw) | – | %s / %s | |\n", cn, sn, summarize(sysc[cn]).f(1), summarize(sysc[sn]).f(1))
	fmt.Fprintf(w, "| per request, ztunnel on %s / on %s: context switches (all threads) | – | %s / %s | |\n", cn, sn, summarize(ctx[cn]).f(1), summarize(ctx[sn]).f(1))
	fmt.Fprintf(w, "| fortio client + server pods' CPU s per 1,000 requests | %s | %s | |\n", summarize(appD).f(3), summarize(appM).f(3))
	fmt.Fprintf(w, "| whole data path (fortio pods + ztunnels) CPU s per 1,000 requests | %s | %s | %s |\n", summarize(totD).f(3), summarize(totM).f(3), summarize(totAdded).f(3))
	for _, node := range []string{cn, sn} {
		fmt.Fprintf(w, "| ztunnel on %s: VmRSS, MiB | before: %s | after HTTP: %s, after iperf3: %s | peak since ztunnel start (VmHWM): %s |\n", node,
			mib(r.ZtunnelIdle[node].RSS), mib(r.ZtunnelAfterHTTP[node].RSS), mib(r.ZtunnelAfterTCP[node].RSS), mib(r.ZtunnelAfterTCP[node].HWM))
		fmt.Fprintf(w, "| ztunnel on %s: of which anonymous (RssAnon; the rest is the mapped binary, RssFile), MiB | before: %s | after HTTP: %s, after iperf3: %s | |\n", node,
			mib(r.ZtunnelIdle[node].Anon), mib(r.ZtunnelAfterHTTP[node].Anon), mib(r.ZtunnelAfterTCP[node].Anon))
	}

	if len(r.TCP) > 0 {
		fmt.Fprintf(w, "\n| iperf3 run | direct Gbit/s | mesh Gbit/s | mesh / direct | ztunnel CPU s during mesh (%s / %s) | iperf3 pods' CPU s (direct / mesh) | machine CPU busy (direct / mesh) |\n", cn, sn)
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
		var ratios, dv, mv []float64
		for round := 1; round <= c.iperfRounds; round++ {
			m, d := pair(r.TCP, "mesh", round), pair(r.TCP, "direct", round)
			if m == nil || d == nil {
				continue
			}
			ratio := m.TCP.BitsPerSecond / d.TCP.BitsPerSecond
			ratios, dv, mv = append(ratios, ratio), append(dv, d.TCP.BitsPerSecond/1e9), append(mv, m.TCP.BitsPerSecond/1e9)
			fmt.Fprintf(w, "| %d | %.2f | %.2f | %.2f | %.2f / %.2f | %.2f / %.2f | %.0f%% / %.0f%% |\n", round, d.TCP.BitsPerSecond/1e9, m.TCP.BitsPerSecond/1e9, ratio,
				m.ZtunnelCPU[cn], m.ZtunnelCPU[sn], d.AppCPU, m.AppCPU, d.MachineCPU*100, m.MachineCPU*100)
		}
		fmt.Fprintf(w, "| mean | %s | %s | %s | | | |\n", summarize(dv).f(2), summarize(mv).f(2), summarize(ratios).f(2))
	}
	var pods []string
	for _, zt := range z.all {
		pods = append(pods, zt.pod)
	}
	sort.Strings(pods)
	fmt.Fprintf(w, "\nztunnel pods: %s.\n", strings.Join(pods, ", "))
}
