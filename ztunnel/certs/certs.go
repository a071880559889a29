// Package certs gives ztunnel one certificate per identity of the pods on
// its node: requested from istiod-lite's CA (Istio's CreateCertificate)
// with the ztunnel's own ServiceAccount token, renewed at half-life, and
// dropped when the last pod of that identity leaves the node.
package certs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/workloadcert"
)

// Manager holds the certificates of the identities in use on the node.
type Manager struct {
	ca  *caclient.Client
	ttl time.Duration
	log *slog.Logger
	ctx context.Context

	mu   sync.Mutex
	byID map[identity.Identity]*entry
}

type entry struct {
	src    *workloadcert.Source
	refs   int
	cancel context.CancelFunc
	done   chan struct{}
}

// NewManager returns a manager whose sources run until ctx ends. ttl is the
// requested lifetime (zero lets the CA decide).
func NewManager(ctx context.Context, ca *caclient.Client, ttl time.Duration, log *slog.Logger) *Manager {
	if log == nil {
		log = slog.Default()
	}
	return &Manager{ca: ca, ttl: ttl, log: log, ctx: ctx, byID: map[identity.Identity]*entry{}}
}

// Acquire returns the certificate source of id, starting it for the first
// user, and waits until it holds a certificate (or ctx ends). Every
// successful Acquire must be paired with a Release.
func (m *Manager) Acquire(ctx context.Context, id identity.Identity) (*workloadcert.Source, error) {
	m.mu.Lock()
	e, ok := m.byID[id]
	if !ok {
		sctx, cancel := context.WithCancel(m.ctx)
		e = &entry{
			src:    workloadcert.NewSource(id, m.ca.Signer(id), workloadcert.Options{TTL: m.ttl, Logger: m.log.With("identity", id.String())}),
			cancel: cancel,
			done:   make(chan struct{}),
		}
		m.byID[id] = e
		go func() {
			defer close(e.done)
			if err := e.src.Run(sctx); err != nil && !errors.Is(err, context.Canceled) {
				m.log.Error("certificate source stopped", "identity", id.String(), "error", err)
			}
		}()
		m.log.Info("requesting certificate", "identity", id.String())
	}
	e.refs++
	m.mu.Unlock()
	select {
	case <-e.src.Ready():
		return e.src, nil
	case <-ctx.Done():
		m.Release(id)
		return nil, fmt.Errorf("certificate for %s: %w", id, ctx.Err())
	}
}

// Release drops one use of id; the last drops its certificate.
func (m *Manager) Release(id identity.Identity) {
	m.mu.Lock()
	e, ok := m.byID[id]
	if !ok {
		m.mu.Unlock()
		return
	}
	e.refs--
	if e.refs > 0 {
		m.mu.Unlock()
		return
	}
	delete(m.byID, id)
	m.mu.Unlock()
	e.cancel()
	<-e.done
	m.log.Info("certificate dropped: no pod of this identity left on the node", "identity", id.String())
}

// Identities lists the identities held, for debug views and tests.
func (m *Manager) Identities() []identity.Identity {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]identity.Identity, 0, len(m.byID))
	for id := range m.byID {
		out = append(out, id)
	}
	return out
}

// CertInfo describes a held certificate, for the admin view.
type CertInfo struct {
	Identity  string    `json:"identity"`
	Pods      int       `json:"pods"`
	Serial    string    `json:"serial,omitempty"`
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	Pending   bool      `json:"pending,omitempty"` // requested, not issued yet
}

// Certificates lists the certificates held, sorted by identity.
func (m *Manager) Certificates() []CertInfo {
	m.mu.Lock()
	out := make([]CertInfo, 0, len(m.byID))
	for id, e := range m.byID {
		ci := CertInfo{Identity: id.String(), Pods: e.refs}
		if c, err := e.src.TLSCertificate(); err == nil && c != nil && c.Leaf != nil {
			ci.Serial, ci.NotBefore, ci.NotAfter = c.Leaf.SerialNumber.Text(16), c.Leaf.NotBefore, c.Leaf.NotAfter
		} else {
			ci.Pending = true
		}
		out = append(out, ci)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b CertInfo) int { return strings.Compare(a.Identity, b.Identity) })
	return out
}
