//go:build linux

package capture_test

import (
	"context"
	"testing"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
)

// BenchmarkApplyRemove is the rule work of enrolling and unenrolling one pod
// (its namespace already exists).
func BenchmarkApplyRemove(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := netnstest.NewT(b)
	cfg := capture.DefaultConfig()
	for b.Loop() {
		if err := capture.Apply(ns, cfg); err != nil {
			b.Fatal(err)
		}
		if err := capture.Remove(ns, cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkReapply is Apply over rules already in place (reconciliation).
func BenchmarkReapply(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := netnstest.NewT(b)
	cfg := capture.DefaultConfig()
	if err := capture.Apply(ns, cfg); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := capture.Apply(ns, cfg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCheck is the reconciliation check of one pod.
func BenchmarkCheck(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := netnstest.NewT(b)
	cfg := capture.DefaultConfig()
	if err := capture.Apply(ns, cfg); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		st, err := capture.Check(ns, cfg)
		if err != nil || !st.Current {
			b.Fatal(st, err)
		}
	}
}

// BenchmarkListenAllClose opens and closes the three in-pod listeners.
func BenchmarkListenAllClose(b *testing.B) {
	netnstest.RequireRoot(b)
	ns := netnstest.NewT(b)
	ctx := context.Background()
	for b.Loop() {
		lns, err := inpod.ListenAll(ctx, ns, inpod.DefaultConfig())
		if err != nil {
			b.Fatal(err)
		}
		if err := lns.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkNetnsCreateDelete is the test harness's own cost per namespace,
// for reading the pod-cycle figure.
func BenchmarkNetnsCreateDelete(b *testing.B) {
	netnstest.RequireRoot(b)
	for b.Loop() {
		ns, err := netnstest.New()
		if err != nil {
			b.Fatal(err)
		}
		if err := ns.Close(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPodCycle is the whole cycle of the leak test.
func BenchmarkPodCycle(b *testing.B) {
	netnstest.RequireRoot(b)
	ctx := context.Background()
	for b.Loop() {
		if err := podCycle(ctx, false); err != nil {
			b.Fatal(err)
		}
	}
}
