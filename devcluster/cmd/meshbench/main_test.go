package main

import (
	"math"
	"strings"
	"testing"
)

// Trimmed from `fortio load -json -` (fortio 1.68.2).
const fortioJSON = `Fortio 1.68.2 running at 1000 queries per second
{
  "RunType": "HTTP",
  "ActualQPS": 999.4,
  "DurationHistogram": {
    "Count": 30000, "Min": 0.0001, "Max": 0.02, "Avg": 0.0007,
    "Percentiles": [
      {"Percentile": 50, "Value": 0.0006},
      {"Percentile": 90, "Value": 0.0011},
      {"Percentile": 99, "Value": 0.0031},
      {"Percentile": 99.9, "Value": 0.0082}
    ]
  },
  "RetCodes": {"200": 30000},
  "Sizes": {"Count": 30000, "Avg": 1142}
}`

func TestParseFortio(t *testing.T) {
	r, err := parseFortio([]byte(fortioJSON))
	if err != nil {
		t.Fatal(err)
	}
	want := fortioResult{QPS: 999.4, Requests: 30000, OK: 30000, P50: 0.0006, P90: 0.0011, P99: 0.0031, P999: 0.0082, Avg: 0.0007, ResponseBytes: 1142}
	if *r != want {
		t.Errorf("got %+v, want %+v", *r, want)
	}

	bad := strings.Replace(fortioJSON, `{"200": 30000}`, `{"200": 29000, "-1": 1000}`, 1)
	if _, err := parseFortio([]byte(bad)); err == nil || !strings.Contains(err.Error(), "29000 of 30000") {
		t.Errorf("errors not reported: %v", err)
	}
	if _, err := parseFortio([]byte("no json")); err == nil {
		t.Error("garbage accepted")
	}
}

func TestParseIperf(t *testing.T) {
	r, err := parseIperf([]byte(`{"start": {}, "intervals": [], "end": {"sum_sent": {"bytes": 9, "bits_per_second": 1}, "sum_received": {"bytes": 2338781165, "bits_per_second": 18703684326.8}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if r.Bytes != 2338781165 || r.BitsPerSecond != 18703684326.8 {
		t.Errorf("got %+v", *r)
	}
	if _, err := parseIperf([]byte(`{"error": "unable to connect to server: Connection refused"}`)); err == nil || !strings.Contains(err.Error(), "refused") {
		t.Errorf("iperf3 error not reported: %v", err)
	}
	if _, err := parseIperf([]byte(`{"end": {}}`)); err == nil {
		t.Error("empty run accepted")
	}
}

func TestParseStat(t *testing.T) {
	// A command with a space and a parenthesis, as proc(5) allows.
	line := "4242 (zt (x) 1) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 567 0 0 20 0 12 0 98765 1317216256 14567 18446744073709551615\n"
	s, err := parseStat([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	if s.ticks != 1234+567 || s.sys != 567 || s.start != 98765 {
		t.Errorf("got %+v", s)
	}
	if _, err := parseStat([]byte("4242 (zt) S 1 2")); err == nil {
		t.Error("short line accepted")
	}
}

func TestNetCPU(t *testing.T) {
	direct := &result{Seconds: 10, ZtunnelCPU: map[string]float64{"a": 0.1, "b": 0.2}}
	mesh := &result{Seconds: 20, ZtunnelCPU: map[string]float64{"a": 3, "b": 2}}
	n := netCPU(mesh, direct)
	if math.Abs(n["a"]-2.8) > 1e-9 || math.Abs(n["b"]-1.6) > 1e-9 {
		t.Errorf("got %v", n)
	}
	if n := netCPU(mesh, nil); n["a"] != 3 {
		t.Errorf("without a direct run: %v", n)
	}
}

func TestSummarize(t *testing.T) {
	s := summarize([]float64{1, 2, 3})
	if s.mean != 2 || s.min != 1 || s.max != 3 || s.f(1) != "2.0 (1.0–3.0)" {
		t.Errorf("got %+v %q", s, s.f(1))
	}
	if got := summarize([]float64{0.5}).f(2); got != "0.50" {
		t.Errorf("one value: %q", got)
	}
}
