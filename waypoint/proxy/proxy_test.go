package proxy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/router"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		in    string
		proto string
		done  bool
	}{
		{"", "", false},
		{"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "h2c", true},
		{"PRI * HTTP/2.0\r\n", "", false},
		{"GET / HTTP/1.1\r\nHost: a\r\n", "http/1.1", true},
		{"POST /x?y=1 HTTP/1.0\r\n", "http/1.1", true},
		{"GET /partial", "", false},
		{"GET / HTTP/2.0\r\n", "", true},
		{"get / HTTP/1.1\r\n", "", true},
		{"\x16\x03\x01\x02\x00", "", true},
		{"GET\x00", "", true},
		{"SSH-2.0-OpenSSH\r\n", "", true},
		{"HELO", "", false},
		{"HELO x\x01", "", true},
	} {
		p, done := classify([]byte(tc.in))
		if p != tc.proto || done != tc.done {
			t.Errorf("classify(%q) = %q,%v, want %q,%v", tc.in, p, done, tc.proto, tc.done)
		}
	}
}

func TestNormalizePath(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b":                 "/a/b",
		"/a/./b":               "/a/b",
		"/a/../b":              "/b",
		"/../../b":             "/b",
		"/a/b/..":              "/a/",
		"/a/b/.":               "/a/b/",
		"/public/%2e%2e/adm":   "/adm",
		"/public/%2E./adm?x=1": "/adm?x=1",
		"/a/...b/c":            "/a/...b/c",
		"/a?q=/../x":           "/a?q=/../x",
		"*":                    "*",
		"/%61dmin":             "/admin",
		"/%7E%5f%2D":           "/~_-",
		"/a%2Fb%2fc":           "/a%2Fb%2fc",
		"/x/%2e%2E/%61":        "/a",
		"/%zz/%4":              "/%zz/%4",
		"/%25%32%65%25%32%65":  "/%252e%252e", // %25 is not unreserved
		"/00%6%610":            "/00j0",
	} {
		if got := normalizePath(in); got != want {
			t.Errorf("normalizePath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestForwardedFor(t *testing.T) {
	for in, want := range map[string]string{
		"for=10.0.0.1":                   "10.0.0.1",
		`for="[2001:db8::1]:4711"`:       "2001:db8::1",
		"proto=http;for=192.0.2.60;by=x": "192.0.2.60",
		"for=10.0.0.2, for=10.0.0.3":     "10.0.0.2",
		"for=unknown":                    "invalid IP",
		"by=10.0.0.1":                    "invalid IP",
		`for="10.1.2.3:80"`:              "10.1.2.3",
		"for=::ffff:10.9.9.9":            "10.9.9.9",
	} {
		h := http.Header{"Forwarded": {in}}
		if got := forwardedFor(h).String(); got != want {
			t.Errorf("Forwarded %q: %s, want %s", in, got, want)
		}
	}
}

func TestReplay(t *testing.T) {
	src := io.NopCloser(strings.NewReader("hello world"))
	r := newReplay(src, 1024)
	first := r.reader(false)
	buf := make([]byte, 5)
	if n, _ := first.Read(buf); string(buf[:n]) != "hello" {
		t.Fatalf("first read %q", buf[:n])
	}
	// A mirror (follower) sees what was read so far, then waits for more.
	mirror := r.reader(true)
	got := make(chan string, 1)
	go func() { b, _ := io.ReadAll(mirror); got <- string(b) }()
	// A retry (driver) replays the recorded part and reads on.
	second, _ := io.ReadAll(r.reader(false))
	if string(second) != "hello world" {
		t.Fatalf("replay %q", second)
	}
	if m := <-got; m != "hello world" {
		t.Fatalf("mirror %q", m)
	}
	if !r.replayable() {
		t.Error("small body not replayable")
	}

	// Over the limit: the live reader still gets everything; a new one
	// cannot replay, and followers fail instead of blocking.
	big := bytes.Repeat([]byte("x"), 100)
	r = newReplay(bytes.NewReader(big), 10)
	follower := r.reader(true)
	all, err := io.ReadAll(r.reader(false))
	if err != nil || len(all) != 100 {
		t.Fatalf("live reader over the limit: %d %v", len(all), err)
	}
	if r.replayable() {
		t.Error("oversized body replayable")
	}
	if _, err := io.ReadAll(r.reader(false)); !errors.Is(err, errReplayUnavailable) {
		t.Errorf("replay of an oversized body: %v", err)
	}
	if _, err := io.ReadAll(follower); !errors.Is(err, errReplayUnavailable) {
		t.Errorf("follower of an oversized body: %v", err)
	}

	// finish wakes a follower waiting for bytes nobody will read.
	pr, pw := io.Pipe()
	defer pw.Close()
	r = newReplay(pr, 10)
	f := r.reader(true)
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(f); done <- err }()
	time.Sleep(10 * time.Millisecond)
	r.finish()
	select {
	case err := <-done:
		if !errors.Is(err, errReplayUnavailable) {
			t.Errorf("follower after finish: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("follower still blocked after finish")
	}
}

func TestRetriable(t *testing.T) {
	pol := func(on ...string) *router.RetryPolicy {
		return &router.RetryPolicy{RetryOn: on, NumRetries: 1, RetriableStatusCodes: []uint32{409, 418}}
	}
	resp := func(code int, grpc string) attemptResult {
		h := http.Header{}
		if grpc != "" {
			h.Set("Content-Type", "application/grpc")
			h.Set("Grpc-Status", grpc)
		}
		return attemptResult{resp: &http.Response{StatusCode: code, Header: h}}
	}
	connErr := attemptResult{err: &upstream.ConnectError{Err: errors.New("refused")}}
	reset := attemptResult{err: errors.New("connection reset")}
	refused := attemptResult{err: errors.New("http2: stream error: stream ID 3; REFUSED_STREAM")}
	for _, tc := range []struct {
		name  string
		p     *router.RetryPolicy
		res   attemptResult
		h2    bool
		retry bool
	}{
		{"no policy", nil, resp(503, ""), false, false},
		{"5xx on 500", pol("5xx"), resp(500, ""), false, true},
		{"5xx on 404", pol("5xx"), resp(404, ""), false, false},
		{"gateway-error on 500", pol("gateway-error"), resp(500, ""), false, false},
		{"gateway-error on 503", pol("gateway-error"), resp(503, ""), false, true},
		{"retriable-status-codes 418", pol("retriable-status-codes"), resp(418, ""), false, true},
		{"retriable-4xx 409", pol("retriable-4xx"), resp(409, ""), false, true},
		{"connect-failure", pol("connect-failure"), connErr, false, true},
		{"connect-failure on reset", pol("connect-failure"), reset, false, false},
		{"5xx on connect failure", pol("5xx"), connErr, false, true},
		{"reset", pol("reset"), reset, false, true},
		{"refused-stream", pol("refused-stream"), refused, true, true},
		{"per-try timeout with 5xx", pol("5xx"), attemptResult{err: context.Canceled, timeout: true}, false, true},
		{"per-try timeout with connect-failure", pol("connect-failure"), attemptResult{err: context.Canceled, timeout: true}, false, false},
		{"no healthy host", pol("5xx"), attemptResult{err: upstream.ErrNoHealthyHost}, false, false},
		{"grpc unavailable", pol("unavailable"), resp(200, "14"), true, true},
		{"grpc internal without condition", pol("unavailable"), resp(200, "13"), true, false},
	} {
		if got := retriable(tc.p, tc.res, tc.h2); got != tc.retry {
			t.Errorf("%s: retriable = %v, want %v", tc.name, got, tc.retry)
		}
	}
}

func TestBackoffBounded(t *testing.T) {
	p := &router.RetryPolicy{BaseInterval: time.Millisecond, MaxInterval: 4 * time.Millisecond}
	start := time.Now()
	for n := 1; n <= 10; n++ {
		if !sleepBackoff(context.Background(), p, n) {
			t.Fatal("backoff interrupted")
		}
	}
	if d := time.Since(start); d > 200*time.Millisecond {
		t.Errorf("10 capped back-offs took %v", d)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if sleepBackoff(ctx, &router.RetryPolicy{BaseInterval: time.Hour}, 3) {
		t.Error("backoff ignored a cancelled context")
	}
}

func TestCloseWhenIdle(t *testing.T) {
	a1, a2 := net.Pipe()
	b1, b2 := net.Pipe()
	defer a2.Close()
	defer b2.Close()
	a, b := net.Conn(a1), net.Conn(b1)
	stop := closeWhenIdle(100*time.Millisecond, &a, &b)
	defer stop()
	// Activity keeps the connection open past the idle time.
	go func() { _, _ = io.Copy(io.Discard, a2) }()
	for range 4 {
		if _, err := a.Write([]byte("x")); err != nil {
			t.Fatalf("closed while active: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Silence closes both ends.
	time.Sleep(250 * time.Millisecond)
	if _, err := a.Write([]byte("x")); err == nil {
		t.Error("a still open after the idle timeout")
	}
	if _, err := b.Write([]byte("x")); err == nil {
		t.Error("b still open after the idle timeout")
	}
}
