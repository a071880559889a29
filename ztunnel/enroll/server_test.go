//go:build linux

package enroll_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/enroll/wire"
)

type fakeHandler struct {
	mu       sync.Mutex
	enrolled map[string]enroll.Pod
	released []enroll.PodRef
	err      error
	delay    time.Duration
	calls    atomic.Int32
}

func (h *fakeHandler) Enroll(ctx context.Context, p enroll.Pod) error {
	h.calls.Add(1)
	if h.delay > 0 {
		time.Sleep(h.delay)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return h.err
	}
	h.enrolled[p.Key()] = p
	return nil
}

func (h *fakeHandler) Release(ctx context.Context, r enroll.PodRef) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.released = append(h.released, r)
	delete(h.enrolled, r.Key())
	return nil
}

func (h *fakeHandler) Check(ctx context.Context, r enroll.PodRef) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.enrolled[r.Key()]; !ok {
		return enroll.ErrNotEnrolled
	}
	return nil
}

var nsDecider = enroll.DeciderFunc(func(ctx context.Context, p enroll.Pod) (enroll.Decision, error) {
	switch p.Namespace {
	case "ambient":
		return enroll.Capture, nil
	case "unknown":
		return enroll.Skip, errors.New("pod not in cache")
	}
	return enroll.Skip, nil
})

func startServer(t *testing.T, h enroll.Handler, mod ...func(*enroll.ServerOptions)) (string, context.CancelFunc, chan error) {
	t.Helper()
	opts := enroll.ServerOptions{Handler: h, Decider: nsDecider, Log: testLog(t)}
	for _, m := range mod {
		m(&opts)
	}
	s, err := enroll.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "run", "ztunnel.sock")
	ln, err := enroll.Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return path, cancel, done
}

func pod(ns, name string) wire.Pod {
	return wire.Pod{Namespace: ns, Name: name, UID: ns + "-" + name + "-uid", ContainerID: "c1", Netns: "/var/run/netns/x"}
}

func TestServerOps(t *testing.T) {
	h := &fakeHandler{enrolled: map[string]enroll.Pod{}}
	path, _, _ := startServer(t, h)
	c := &wire.Client{Path: path, Timeout: 5 * time.Second}
	ctx := context.Background()

	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket %v %v", fi, err)
	}

	resp, err := c.Do(ctx, wire.Request{Op: wire.OpAdd, Pod: pod("ambient", "a")})
	if err != nil || resp.Status != wire.StatusEnrolled {
		t.Fatalf("add captured: %+v %v", resp, err)
	}
	if _, ok := h.enrolled["ambient-a-uid"]; !ok {
		t.Fatal("handler did not enroll")
	}
	resp, err = c.Do(ctx, wire.Request{Op: wire.OpCheck, Pod: pod("ambient", "a")})
	if err != nil || resp.Status != wire.StatusOK {
		t.Fatalf("check: %+v %v", resp, err)
	}
	resp, err = c.Do(ctx, wire.Request{Op: wire.OpAdd, Pod: pod("plain", "b")})
	if err != nil || resp.Status != wire.StatusSkipped {
		t.Fatalf("add not captured: %+v %v", resp, err)
	}
	resp, err = c.Do(ctx, wire.Request{Op: wire.OpCheck, Pod: pod("plain", "b")})
	if err != nil || resp.Status != wire.StatusOK {
		t.Fatalf("check not captured: %+v %v", resp, err)
	}
	_, err = c.Do(ctx, wire.Request{Op: wire.OpAdd, Pod: pod("unknown", "c")})
	var re *wire.RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "pod not in cache") {
		t.Fatalf("decider error: want RemoteError, got %v", err)
	}
	resp, err = c.Do(ctx, wire.Request{Op: wire.OpDel, Pod: pod("ambient", "a")})
	if err != nil || resp.Status != wire.StatusReleased {
		t.Fatalf("del: %+v %v", resp, err)
	}
	_, err = c.Do(ctx, wire.Request{Op: wire.OpCheck, Pod: pod("ambient", "a")})
	if !errors.As(err, &re) || !strings.Contains(re.Message, "not enrolled") {
		t.Fatalf("check after del: %v", err)
	}
	h.err = errors.New("nft exploded")
	_, err = c.Do(ctx, wire.Request{Op: wire.OpAdd, Pod: pod("ambient", "d")})
	if !errors.As(err, &re) || !strings.Contains(re.Message, "nft exploded") || wire.IsUnavailable(err) {
		t.Fatalf("handler error: %v", err)
	}
	// Invalid requests are answered with an error, not a hang.
	for _, req := range []wire.Request{
		{Op: "frobnicate", Pod: pod("ambient", "x")},
		{Op: wire.OpAdd, Pod: wire.Pod{Name: "x"}},
		{Op: wire.OpAdd, Pod: wire.Pod{Namespace: "ambient", Name: "x"}},
	} {
		if _, err := c.Do(ctx, req); !errors.As(err, &re) || !strings.Contains(re.Message, "bad request") {
			t.Fatalf("%+v: %v", req, err)
		}
	}
}

// rawExchange writes b on a fresh connection and returns the answer.
func rawExchange(t *testing.T, path string, b []byte, halfClose bool) wire.Response {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if len(b) > 0 {
		if _, err := conn.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	if halfClose {
		_ = conn.(*net.UnixConn).CloseWrite()
	}
	var resp wire.Response
	if err := wire.ReadMessage(conn, &resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestServerRejectsBadInput(t *testing.T) {
	h := &fakeHandler{enrolled: map[string]enroll.Pod{}}
	path, _, _ := startServer(t, h, func(o *enroll.ServerOptions) { o.ReadTimeout = 300 * time.Millisecond })
	cases := map[string]struct {
		data      []byte
		halfClose bool
		want      string
	}{
		"garbage":       {[]byte("hello\n"), true, "decode"},
		"empty":         {nil, true, "empty"},
		"version 2":     {[]byte(`{"version":2,"op":"add","pod":{"namespace":"a","name":"b","netns":"/x"}}`), true, "version"},
		"oversized":     {[]byte(`{"version":1,"op":"add","pod":{"namespace":"` + strings.Repeat("a", wire.MaxMessageSize) + `"}}`), false, "larger"},
		"slow client":   {nil, false, "timeout"},
		"bad ip":        {[]byte(`{"version":1,"op":"add","pod":{"namespace":"a","name":"b","ips":["999.1.1.1"]}}`), true, "decode"},
		"no half-close": {[]byte(`{"version":1,"op":"add","pod":{"namespace":"plain","name":"b","netns":"/x"}}`), false, ""},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			resp := rawExchange(t, path, tc.data, tc.halfClose)
			if tc.want == "" {
				if resp.Status != wire.StatusSkipped {
					t.Fatalf("%+v", resp)
				}
				return
			}
			if resp.Status != wire.StatusError || !strings.Contains(resp.Message, tc.want) {
				t.Fatalf("want error containing %q, got %+v", tc.want, resp)
			}
		})
	}
	if n := h.calls.Load(); n != 0 {
		t.Fatalf("handler called %d times for bad input", n)
	}
}

func TestClientUnavailable(t *testing.T) {
	dir := t.TempDir()
	c := &wire.Client{Path: filepath.Join(dir, "missing.sock"), Timeout: time.Second}
	_, err := c.Do(context.Background(), wire.Request{Op: wire.OpAdd, Pod: pod("ambient", "a")})
	if !wire.IsUnavailable(err) {
		t.Fatalf("missing socket: %v", err)
	}
	// A server that accepts and never answers.
	path := filepath.Join(dir, "mute.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			defer conn.Close()
		}
	}()
	c = &wire.Client{Path: path, Timeout: 200 * time.Millisecond}
	start := time.Now()
	_, err = c.Do(context.Background(), wire.Request{Op: wire.OpAdd, Pod: pod("ambient", "a")})
	if !wire.IsUnavailable(err) || time.Since(start) > 2*time.Second {
		t.Fatalf("mute server: %v after %v", err, time.Since(start))
	}
}

func TestServerRefusesOtherUsers(t *testing.T) {
	h := &fakeHandler{enrolled: map[string]enroll.Pod{}}
	path, _, _ := startServer(t, h, func(o *enroll.ServerOptions) { o.AllowedUIDs = []uint32{54321} })
	c := &wire.Client{Path: path, Timeout: 2 * time.Second}
	_, err := c.Do(context.Background(), wire.Request{Op: wire.OpAdd, Pod: pod("ambient", "a")})
	if !wire.IsUnavailable(err) || h.calls.Load() != 0 {
		t.Fatalf("want the connection refused, got %v (calls %d)", err, h.calls.Load())
	}
}

// TestServerShutdownFinishesInFlight: cancelling Serve's context stops
// accepting, lets a request in progress finish, removes the socket, and
// releases nothing.
func TestServerShutdownFinishesInFlight(t *testing.T) {
	h := &fakeHandler{enrolled: map[string]enroll.Pod{}, delay: 300 * time.Millisecond}
	path, cancel, done := startServer(t, h)
	c := &wire.Client{Path: path, Timeout: 5 * time.Second}
	res := make(chan error, 1)
	go func() {
		_, err := c.Do(context.Background(), wire.Request{Op: wire.OpAdd, Pod: pod("ambient", "a")})
		res <- err
	}()
	for h.calls.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-res; err != nil {
		t.Fatalf("in-flight request: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	done <- nil // for the cleanup
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left: %v", err)
	}
	if len(h.released) != 0 {
		t.Fatalf("shutdown released %v", h.released)
	}
}

func TestServerConcurrency(t *testing.T) {
	h := &fakeHandler{enrolled: map[string]enroll.Pod{}, delay: 20 * time.Millisecond}
	path, _, _ := startServer(t, h, func(o *enroll.ServerOptions) { o.MaxConcurrent = 8 })
	c := &wire.Client{Path: path, Timeout: 10 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for i := range 100 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := pod("ambient", "p"+string(rune('a'+i%26))+string(rune('a'+i/26)))
			if _, err := c.Do(context.Background(), wire.Request{Op: wire.OpAdd, Pod: p}); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(h.enrolled) != 100 {
		t.Fatalf("enrolled %d", len(h.enrolled))
	}
}

func TestListenRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := enroll.Listen(path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("want refusal, got %v", err)
	}
}

func TestAmbientDecision(t *testing.T) {
	amb := map[string]string{enroll.LabelDataplaneMode: enroll.ModeAmbient}
	none := map[string]string{enroll.LabelDataplaneMode: enroll.ModeNone}
	for _, tc := range []struct {
		ns, pod map[string]string
		host    bool
		want    enroll.Decision
	}{
		{amb, nil, false, enroll.Capture},
		{amb, none, false, enroll.Skip},
		{amb, nil, true, enroll.Skip},
		{nil, nil, false, enroll.Skip},
		{nil, amb, false, enroll.Capture},
		{nil, amb, true, enroll.Skip},
	} {
		if got := enroll.AmbientDecision(tc.ns, tc.pod, tc.host); got != tc.want {
			t.Errorf("ns %v pod %v host %v: %v, want %v", tc.ns, tc.pod, tc.host, got, tc.want)
		}
	}
}

func TestNamespaceState(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "state.json")
	if _, err := wire.ReadNamespaceState(path); err == nil {
		t.Fatal("missing file: want error")
	}
	if err := wire.WriteNamespaceState(path, []string{"b", "a", "b"}); err != nil {
		t.Fatal(err)
	}
	st, err := wire.ReadNamespaceState(path)
	if err != nil {
		t.Fatal(err)
	}
	if !st.IsAmbient("a") || !st.IsAmbient("b") || st.IsAmbient("c") || len(st.Ambient) != 2 {
		t.Fatalf("%+v", st)
	}
	if err := os.WriteFile(path, []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := wire.ReadNamespaceState(path); err == nil {
		t.Fatal("garbage: want error")
	}
}

// testLog sends log lines to the test's log (shown on failure or with -v).
func testLog(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
