package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"time"
)

const clockTicks = 100 // USER_HZ

// treePIDs is pid and its descendants (nginx's workers).
func treePIDs(pid int) []int {
	children := map[int][]int{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		p, err := strconv.Atoi(d.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p))
		if err != nil {
			continue
		}
		s := string(data)
		i := strings.LastIndexByte(s, ')')
		f := strings.Fields(s[i+1:])
		if len(f) > 1 {
			pp, _ := strconv.Atoi(f[1])
			children[pp] = append(children[pp], p)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// cpuOf is the CPU seconds (utime+stime) used so far by the processes and
// their descendants.
func cpuOf(ps []*proc) float64 {
	var ticks uint64
	for _, p := range ps {
		for _, pid := range treePIDs(p.cmd.Process.Pid) {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if err != nil {
				continue
			}
			s := string(data)
			f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
			if len(f) < 13 {
				continue
			}
			u, _ := strconv.ParseUint(f[11], 10, 64)
			st, _ := strconv.ParseUint(f[12], 10, 64)
			ticks += u + st
		}
	}
	return float64(ticks) / clockTicks
}

type memSample struct{ RSS, Anon, HWM int64 } // bytes, summed over the tree

func memOf(ps map[string]*proc) map[string]memSample {
	m := map[string]memSample{}
	for name, p := range ps {
		var s memSample
		for _, pid := range treePIDs(p.cmd.Process.Pid) {
			data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(data), "\n") {
				f := strings.Fields(line)
				if len(f) < 2 {
					continue
				}
				kb, _ := strconv.ParseInt(f[1], 10, 64)
				switch f[0] {
				case "VmRSS:":
					s.RSS += kb << 10
				case "RssAnon:":
					s.Anon += kb << 10
				case "VmHWM:":
					s.HWM += kb << 10
				}
			}
		}
		m[name] = s
	}
	return m
}

type cpuTimes struct{ busy, total uint64 }

func machineCPU() cpuTimes {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return cpuTimes{}
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	var t cpuTimes
	for i, v := range f[1:] {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i >= 8 {
			break
		}
		t.total += n
		if i != 3 && i != 4 {
			t.busy += n
		}
	}
	return t
}

func (t cpuTimes) busySince(s cpuTimes) float64 {
	if t.total <= s.total {
		return math.NaN()
	}
	return float64(t.busy-s.busy) / float64(t.total-s.total)
}

func machineInfo() string {
	model := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s", runtime.NumCPU(), model, runtime.Version())
}

type report struct {
	Config      config `json:"-"`
	Machine     string
	Start, End  time.Time
	Backend     *proc `json:"-"`
	Idle, After map[string]memSample
	Runs        []*result
	Rate        []*result `json:",omitempty"` // the fixed-rate phase
}

// med is the median and range of some values.
type med struct{ median, min, max float64 }

func medianOf(v []float64) med {
	if len(v) == 0 {
		return med{math.NaN(), math.NaN(), math.NaN()}
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return med{m, s[0], s[len(s)-1]}
}

func (m med) f(prec int) string {
	if math.IsNaN(m.median) {
		return "–"
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, m.median, prec, m.min, prec, m.max)
}

func (r *report) run(target string, round int) *result {
	for _, x := range r.Runs {
		if x.Target == target && x.Round == round {
			return x
		}
	}
	return nil
}

func mib(b int64) string { return fmt.Sprintf("%.1f", float64(b)/(1<<20)) }

func (r *report) print(w io.Writer, targets []*target) {
	c := r.Config
	fmt.Fprintf(w, "\n### l7bench, %s (%s)\n\n", r.Start.UTC().Format("2006-01-02 15:04 MST"), r.End.Sub(r.Start).Round(time.Second))
	fmt.Fprintf(w, "%s. wrk -t%d -c%d, %s per run (after a %s warm-up), %d rounds, target order rotating; GET %s, %d B response body; nginx proxy %d workers. All on 127.0.0.1.\n\n",
		r.Machine, c.threads, c.conns, c.duration, c.warmup, c.rounds, benchPath, c.body, c.nginxWorkers)
	fmt.Fprintln(w, "| run | target | req/s | p50 ms | p90 ms | p99 ms | proxy CPU µs/req | adapter CPU µs/req | backend CPU µs/req | wrk CPU µs/req | machine busy |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
	for _, x := range r.Runs {
		n := float64(x.Requests)
		fmt.Fprintf(w, "| %d | %s | %.0f | %.2f | %.2f | %.2f | %.1f | %.1f | %.1f | %.1f | %.0f%% |\n", x.Round, x.Target, x.RPS, x.P50, x.P90, x.P99,
			x.ProxyCPU/n*1e6, x.ExtraCPU/n*1e6, x.BackendCPU/n*1e6, x.WrkCPU/n*1e6, x.MachineBusy*100)
	}
	fmt.Fprintf(w, "\nSummary: median over %d rounds (min–max); \"of direct\" is each round's req/s divided by the same round's direct req/s.\n\n", c.rounds)
	fmt.Fprintln(w, "| target | req/s | of direct | p50 ms | p99 ms | proxy CPU µs per request | + adapter (client-side HBONE) µs per request |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- |")
	for _, t := range targets {
		var rps, ratio, p50, p99, cpu, extra []float64
		for round := 1; round <= c.rounds; round++ {
			x := r.run(t.name, round)
			if x == nil {
				continue
			}
			n := float64(x.Requests)
			rps, p50, p99 = append(rps, x.RPS), append(p50, x.P50), append(p99, x.P99)
			if d := r.run("direct", round); d != nil {
				ratio = append(ratio, x.RPS/d.RPS)
			}
			if t.name == "direct" {
				cpu = append(cpu, x.BackendCPU/n*1e6)
			} else {
				cpu = append(cpu, x.ProxyCPU/n*1e6)
			}
			if len(t.extra) > 0 {
				extra = append(extra, x.ExtraCPU/n*1e6)
			}
		}
		name := t.name
		if name == "direct" {
			name = "direct (CPU: the backend's)"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s |\n", name, medianOf(rps).f(0), medianOf(ratio).f(3), medianOf(p50).f(2), medianOf(p99).f(2), medianOf(cpu).f(1), medianOf(extra).f(1))
	}
	if len(r.Rate) > 0 {
		fmt.Fprintf(w, "\nFixed rate: fortio load -qps %d -c 8 -uniform -payload-size %d (POST, HTTP/1.1 keep-alive), %s per run, %d rounds; medians (min–max). CPU µs per request = CPU ms per 1,000 requests (= vCPU × 1,000 at 1,000 req/s).\n\n",
			c.rate, c.payload, c.rateDuration, c.rateRounds)
		fmt.Fprintln(w, "| target | req/s | p50 ms | p50 added over direct (per round), ms | p99 ms | proxy CPU µs per request | + adapter µs per request | machine busy |")
		fmt.Fprintln(w, "| --- | --- | --- | --- | --- | --- | --- | --- |")
		for _, t := range targets {
			var rps, p50, added, p99, cpu, extra, busy []float64
			for _, x := range r.Rate {
				if x.Target != t.name {
					continue
				}
				n := float64(x.Requests)
				rps, p50, p99, busy = append(rps, x.RPS), append(p50, x.P50), append(p99, x.P99), append(busy, x.MachineBusy*100)
				for _, d := range r.Rate {
					if d.Target == "direct" && d.Round == x.Round {
						added = append(added, x.P50-d.P50)
					}
				}
				if t.name == "direct" {
					cpu = append(cpu, x.BackendCPU/n*1e6)
				} else {
					cpu = append(cpu, x.ProxyCPU/n*1e6)
				}
				if len(t.extra) > 0 {
					extra = append(extra, x.ExtraCPU/n*1e6)
				}
			}
			name := t.name
			if name == "direct" {
				name = "direct (CPU: the backend's)"
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s |\n", name, medianOf(rps).f(0), medianOf(p50).f(3), medianOf(added).f(3), medianOf(p99).f(3), medianOf(cpu).f(1), medianOf(extra).f(1), medianOf(busy).f(0))
		}
	}
	fmt.Fprintln(w, "\n| process | RSS before, MiB | RSS after, MiB | anonymous after, MiB | peak RSS (VmHWM), MiB |")
	fmt.Fprintln(w, "| --- | --- | --- | --- | --- |")
	for _, name := range []string{"nginx", "caddy", "go-router", "waypoint", "adapter"} {
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", name, mib(r.Idle[name].RSS), mib(r.After[name].RSS), mib(r.After[name].Anon), mib(r.After[name].HWM))
	}
	fmt.Fprintln(w, "\n(nginx: master and workers summed; the waypoint process also holds its in-process control plane, idle after start.)")
}
