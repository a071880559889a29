//go:build linux

package netnstest

import "testing"

func TestNewIsNotHost(t *testing.T) {
	RequireRoot(t)
	for range 3 {
		ns := NewT(t)
		host, err := IsHostNS(ns)
		if err != nil || host {
			t.Fatalf("host %v, %v", host, err)
		}
	}
	p := NewPair(t, 1)
	if p.NS.Fd() == p.PeerNS.Fd() {
		t.Fatal("same fd")
	}
}
