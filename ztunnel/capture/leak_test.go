//go:build linux

package capture_test

import (
	"context"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
)

var leakCycles = flag.Int("leak-cycles", 1000, "pod create/delete cycles in TestNoLeaksAcrossPodCycles")

// podCycle is one pod's life as the ztunnel sees it: the namespace appears,
// the pod is enrolled (rules and listeners), then unenrolled and deleted.
func podCycle(ctx context.Context, check bool) error {
	ns, err := netnstest.New()
	if err != nil {
		return err
	}
	defer ns.Close()
	cfg := capture.DefaultConfig()
	if err := capture.Apply(ns, cfg); err != nil {
		return err
	}
	lns, err := inpod.ListenAll(ctx, ns, inpod.DefaultConfig())
	if err != nil {
		return err
	}
	if err := lns.Close(); err != nil {
		return err
	}
	if err := capture.Remove(ns, cfg); err != nil {
		return err
	}
	if check {
		st, err := capture.Check(ns, cfg)
		if err != nil {
			return err
		}
		if st.Present() {
			return fmt.Errorf("rules still present after Remove: %q", st.Problems)
		}
		if len(st.Problems) != 5 { // table, and rule + route for each family
			return fmt.Errorf("after Remove, want table and both families' rule and route reported missing, got %q", st.Problems)
		}
	}
	return ns.Close()
}

// fdSummary counts this process's descriptors, and among them namespace
// handles and sockets.
func fdSummary() (total, netns, sockets int, err error) {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0, 0, 0, err
	}
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil {
			continue // the directory's own descriptor, closed by now
		}
		total++
		switch {
		case strings.HasPrefix(target, "net:["):
			netns++
		case strings.HasPrefix(target, "socket:["):
			sockets++
		}
	}
	return total, netns, sockets, nil
}

// TestNoLeaksAcrossPodCycles runs 1,000 pod cycles and checks that goroutines
// and file descriptors (namespace handles and sockets included) return to
// their baseline, and that Remove leaves nothing behind each time.
func TestNoLeaksAcrossPodCycles(t *testing.T) {
	netnstest.RequireRoot(t)
	ctx := context.Background()
	// Warm up: first use starts process-wide state (netpoll, runtime threads).
	for range 3 {
		if err := podCycle(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	runtime.GC()
	baseG := runtime.NumGoroutine()
	baseFD, baseNS, baseSock, err := fdSummary()
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	n := *leakCycles
	for i := range n {
		// Check (an extra read of the ruleset) on every 10th cycle keeps the
		// loop fast while still covering Remove's result throughout.
		if err := podCycle(ctx, i%10 == 0); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	elapsed := time.Since(start)
	t.Logf("%d pod cycles in %v (%v per cycle)", n, elapsed.Round(time.Millisecond), (elapsed / time.Duration(max(n, 1))).Round(time.Microsecond))

	var g, fd, nsfd, sock int
	deadline := time.Now().Add(5 * time.Second)
	for {
		runtime.GC()
		g = runtime.NumGoroutine()
		fd, nsfd, sock, err = fdSummary()
		if err != nil {
			t.Fatal(err)
		}
		if g <= baseG && fd <= baseFD && nsfd <= baseNS && sock <= baseSock || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if g > baseG {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutines: %d after %d cycles, baseline %d\n%s", g, n, baseG, buf[:runtime.Stack(buf, true)])
	}
	if fd > baseFD || nsfd > baseNS || sock > baseSock {
		t.Errorf("file descriptors after %d cycles: %d (netns %d, sockets %d), baseline %d (netns %d, sockets %d)",
			n, fd, nsfd, sock, baseFD, baseNS, baseSock)
	}
}
