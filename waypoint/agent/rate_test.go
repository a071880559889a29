package agent

import (
	"bytes"
	"io"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"
)

// BenchmarkWaypointHTTPRate drives the whole in-process mesh path (client
// HBONE → waypoint → HBONE → ztunnel → backend) at a fixed rate, as the
// fortio runs of bench-l7 and bench-waypoint do: 1,000 POST/s with 1 KiB
// bodies over 8 keep-alive connections, requests evenly spaced. It reports
// the process's CPU time and context switches per request: at moderate load
// the cost is the threads woken for every request, which a saturating
// benchmark does not show. Everything shares one process, so the figures
// are for comparing builds in the same run, not the waypoint alone.
//
//	go test -run '^$' -bench WaypointHTTPRate -benchtime 5000x ./waypoint/agent/
func BenchmarkWaypointHTTPRate(b *testing.B) {
	const conns, rate = 8, 1000
	m := startMesh(b)
	c := m.httpClient(80, false)
	c.Transport.(*http.Transport).MaxIdleConnsPerHost = conns
	body := bytes.Repeat([]byte("x"), 1024)
	url := "http://" + echoHost + "/bench"
	post := func() error {
		resp, err := c.Post(url, "application/octet-stream", bytes.NewReader(body))
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	// Warm up: open the connections (HBONE streams) and pools.
	var wg sync.WaitGroup
	for range conns {
		wg.Go(func() {
			for range 20 {
				if err := post(); err != nil {
					b.Error(err)
				}
			}
		})
	}
	wg.Wait()

	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	b.ResetTimer()
	start := time.Now()
	var mu sync.Mutex
	next := 0
	for range conns {
		wg.Go(func() {
			for {
				mu.Lock()
				i := next
				next++
				mu.Unlock()
				if i >= b.N {
					return
				}
				time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / rate)))
				if err := post(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	cpu := time.Duration(syscall.TimevalToNsec(ru1.Utime) - syscall.TimevalToNsec(ru0.Utime) +
		syscall.TimevalToNsec(ru1.Stime) - syscall.TimevalToNsec(ru0.Stime))
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/req")
	b.ReportMetric(float64(ru1.Nvcsw-ru0.Nvcsw+ru1.Nivcsw-ru0.Nivcsw)/float64(b.N), "ctxsw/req")
	b.ReportMetric(0, "ns/op") // wall time is the rate, not a result
}
