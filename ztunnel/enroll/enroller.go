//go:build linux

package enroll

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"syscall"

	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/inpod"
	"github.com/ambit-mesh/ambit/ztunnel/podns"
)

// EnrollerOptions configure an Enroller.
type EnrollerOptions struct {
	// Capture is the rule set; capture.DefaultConfig() when nil. The
	// listeners use its ports and mark.
	Capture *capture.Config
	// OnEnrolled is called once per enrollment, after the pod's rules and
	// listeners are in place, with the pod's namespace (for dialing from
	// inside it) and the listeners, which the proxy serves. Both stay owned
	// by the Enroller, which closes them after OnReleased. It runs
	// while the pod's entry is locked: it must not block for long, nor call
	// back into the Enroller for the same pod.
	OnEnrolled func(pod Pod, ns *podns.NS, lns *inpod.Listeners)
	// OnReleased is called when a pod's listeners are about to be closed: on
	// Release (after its rules are removed) and on Close (rules kept). Same
	// constraints as OnEnrolled.
	OnReleased func(pod PodRef)
	// Log receives enrollment events (slog.Default when nil).
	Log *slog.Logger
	// HostNetns are namespace paths that are never enrolled (and never
	// returned by a scan): /proc/1/ns/net (the node's, with hostPID) and
	// /proc/self/ns/net (the ztunnel's own) when nil.
	HostNetns []string
	// HostRoot is the node's file system root as the ztunnel sees it, for
	// netns paths not mounted into its container: "/proc/1/root" with
	// hostPID. Empty: paths are opened only as given.
	HostRoot string
	// ProcRoot is where FindNetnsByIP scans; "/proc" when empty.
	ProcRoot string
	// ReconcileWorkers bounds parallel enrollments in Reconcile; 4 when zero.
	ReconcileWorkers int
}

// Stats counts what an Enroller has done.
type Stats struct {
	// Enrolled is the number of pods enrolled now.
	Enrolled int
	// Applied counts enrollments that programmed rules; Adopted those that
	// found current rules (left by an earlier ztunnel) and only reopened
	// the listeners; Repaired counts re-applications to an enrolled pod
	// whose rules had gone stale or missing.
	Applied, Adopted, Repaired uint64
	// Released counts releases of enrolled pods; Failed counts failed
	// enrollments.
	Released, Failed uint64
}

// Enroller is the Handler that captures pods with capture and inpod and keeps
// a registry of enrolled pods (pod key → namespace handle and listeners). It
// is safe for concurrent use; operations on one pod are serialized, different
// pods proceed in parallel.
type Enroller struct {
	opts    EnrollerOptions
	cfg     capture.Config
	lcfg    inpod.Config
	log     *slog.Logger
	hostIDs map[nsID]bool

	locks [64]sync.Mutex // striped by pod key

	mu     sync.Mutex // guards pods, stats, closed
	pods   map[string]*entry
	stats  Stats
	closed bool
}

type entry struct {
	pod Pod
	ns  *podns.NS
	id  nsID
	lns *inpod.Listeners
}

// NewEnroller returns an Enroller with an empty registry. After a ztunnel
// restart, call Reconcile with the pods that should be enrolled: pods whose
// rules are current are re-adopted without touching their rules.
func NewEnroller(opts EnrollerOptions) (*Enroller, error) {
	cfg := capture.DefaultConfig()
	if opts.Capture != nil {
		cfg = *opts.Capture
		cfg.ExcludeAddrs = slices.Clone(cfg.ExcludeAddrs)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if opts.HostNetns == nil {
		opts.HostNetns = defaultHostNetns
	}
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.ReconcileWorkers <= 0 {
		opts.ReconcileWorkers = 4
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Enroller{
		opts: opts,
		cfg:  cfg,
		lcfg: inpod.Config{
			OutboundPort: cfg.OutboundPort,
			InboundPort:  cfg.InboundPort,
			HBONEPort:    cfg.HBONEPort,
			Mark:         cfg.Mark,
		},
		log:     log.With("component", "enroller"),
		hostIDs: hostIDs(opts.HostNetns),
		pods:    make(map[string]*entry),
	}, nil
}

func (e *Enroller) lock(key string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	m := &e.locks[h.Sum32()%uint32(len(e.locks))]
	m.Lock()
	return m.Unlock
}

func (e *Enroller) get(key string) (*entry, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil, errors.New("enroll: enroller is closed")
	}
	return e.pods[key], nil
}

// Enroll captures pod: it opens the pod's network namespace (by path, else by
// IP), programs the capture rules unless current ones are already there,
// opens the listeners and calls OnEnrolled. Enrolling an enrolled pod again
// with the same namespace only repairs its rules if needed; with another
// namespace (a new sandbox) the old enrollment is released first. On failure
// nothing is left behind, except rules that were in place before the call
// (the pod then stays captured with no listener, which fails closed).
func (e *Enroller) Enroll(ctx context.Context, pod Pod) error {
	if pod.Namespace == "" || pod.Name == "" {
		return errors.New("enroll: pod namespace and name are required")
	}
	pod.IPs = slices.Clone(pod.IPs)
	unlock := e.lock(pod.Key())
	defer unlock()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("enroll %s: %w", pod.PodRef, err)
	}
	old, err := e.get(pod.Key())
	if err != nil {
		return err
	}
	err = e.enrollLocked(ctx, pod, old)
	if err != nil {
		e.mu.Lock()
		e.stats.Failed++
		e.mu.Unlock()
	}
	return err
}

func (e *Enroller) enrollLocked(ctx context.Context, pod Pod, old *entry) error {
	ns, err := e.openNetns(ctx, pod)
	if err != nil {
		return fmt.Errorf("enroll %s: %w", pod.PodRef, err)
	}
	id, err := fdID(ns.Fd())
	if err != nil {
		_ = ns.Close()
		return fmt.Errorf("enroll %s: identify netns: %w", pod.PodRef, err)
	}
	if e.hostIDs[id] {
		_ = ns.Close()
		return fmt.Errorf("enroll %s: refusing to capture %s: it is the node's or the ztunnel's own network namespace (host-network pod?)", pod.PodRef, pod.Netns)
	}
	if old != nil && old.id == id {
		// Already enrolled in this namespace: make sure the rules are still
		// current (somebody may have flushed them) and keep the listeners.
		_ = ns.Close()
		st, err := capture.Check(old.ns, e.cfg)
		if err != nil {
			return fmt.Errorf("enroll %s: %w", pod.PodRef, err)
		}
		if !st.Current {
			if err := capture.Apply(old.ns, e.cfg); err != nil {
				return fmt.Errorf("enroll %s: repair rules: %w", pod.PodRef, err)
			}
			e.log.Warn("repaired capture rules of an enrolled pod", "pod", pod.PodRef.String(), "problems", st.Problems)
			e.mu.Lock()
			e.stats.Repaired++
			e.mu.Unlock()
		}
		e.mu.Lock()
		old.pod = pod
		e.mu.Unlock()
		return nil
	}
	if old != nil {
		// A new sandbox for the same pod: the old one is going away.
		e.log.Info("pod has a new network namespace; releasing the old one", "pod", pod.PodRef.String(), "old_container", old.pod.ContainerID)
		if err := e.releaseLocked(old, true); err != nil {
			e.log.Warn("releasing the old sandbox failed", "pod", pod.PodRef.String(), "err", err)
		}
	}

	st, err := capture.Check(ns, e.cfg)
	if err != nil {
		_ = ns.Close()
		return fmt.Errorf("enroll %s: %w", pod.PodRef, err)
	}
	adopted := st.Current
	if !adopted {
		if err := capture.Apply(ns, e.cfg); err != nil {
			_ = ns.Close()
			return fmt.Errorf("enroll %s: %w", pod.PodRef, err)
		}
	}
	lns, err := inpod.ListenAll(ctx, ns, e.lcfg)
	if err != nil {
		if !st.Present() {
			// The rules are ours from this call: take them back.
			if rerr := capture.Remove(ns, e.cfg); rerr != nil {
				err = errors.Join(err, fmt.Errorf("undo rules: %w", rerr))
			}
		}
		_ = ns.Close()
		return fmt.Errorf("enroll %s: %w", pod.PodRef, err)
	}
	ent := &entry{pod: pod, ns: ns, id: id, lns: lns}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		_ = lns.Close()
		_ = ns.Close()
		return errors.New("enroll: enroller is closed")
	}
	e.pods[pod.Key()] = ent
	e.stats.Enrolled = len(e.pods)
	if adopted {
		e.stats.Adopted++
	} else {
		e.stats.Applied++
	}
	e.mu.Unlock()
	e.log.Info("pod enrolled", "pod", pod.PodRef.String(), "netns", pod.Netns, "ips", pod.IPs, "adopted_rules", adopted)
	if e.opts.OnEnrolled != nil {
		e.opts.OnEnrolled(pod, ns, lns)
	}
	return nil
}

// openNetns opens the pod's namespace by path, falling back to a scan by IP.
func (e *Enroller) openNetns(ctx context.Context, pod Pod) (*podns.NS, error) {
	var errs []error
	if pod.Netns != "" {
		ns, err := podns.Open(pod.Netns)
		if err == nil {
			return ns, nil
		}
		errs = append(errs, err)
		// The path is the node's (CNI_NETNS); when it is not mounted into
		// the ztunnel's container, reach it through the root of a process
		// in the node's mount namespace: the CNI plugin asking (its pid
		// from SO_PEERCRED, with hostPID), else HostRoot.
		var roots []string
		if pid := peerPID(ctx); pid > 0 {
			roots = append(roots, fmt.Sprintf("/proc/%d/root", pid))
		}
		if e.opts.HostRoot != "" {
			roots = append(roots, e.opts.HostRoot)
		}
		for _, root := range roots {
			if !filepath.IsAbs(pod.Netns) {
				break
			}
			ns, err := podns.Open(filepath.Join(root, pod.Netns))
			if err == nil {
				return ns, nil
			}
			errs = append(errs, err)
		}
	}
	for _, ip := range pod.IPs {
		ns, err := findNetnsByIP(e.opts.ProcRoot, e.hostIDs, ip)
		if err == nil {
			return ns, nil
		}
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		return nil, errors.New("neither a netns path nor an IP to find the pod's network namespace")
	}
	return nil, errors.Join(errs...)
}

// Release unenrolls the pod: removes its rules, calls OnReleased, closes its
// listeners and its namespace handle. A pod that is not enrolled, or a
// request naming another sandbox than the enrolled one, is a no-op.
func (e *Enroller) Release(ctx context.Context, ref PodRef) error {
	unlock := e.lock(ref.Key())
	defer unlock()
	ent, err := e.get(ref.Key())
	if err != nil || ent == nil {
		return err
	}
	if ref.ContainerID != "" && ent.pod.ContainerID != "" && ref.ContainerID != ent.pod.ContainerID {
		e.log.Info("ignoring release of a replaced sandbox", "pod", ref.String(), "container", ref.ContainerID, "enrolled_container", ent.pod.ContainerID)
		return nil
	}
	return e.releaseLocked(ent, true)
}

// releaseLocked drops ent from the registry and closes it; with removeRules
// its rules are removed first, so that new connections go direct rather than
// to a closed listener.
func (e *Enroller) releaseLocked(ent *entry, removeRules bool) error {
	e.mu.Lock()
	if e.pods[ent.pod.Key()] == ent {
		delete(e.pods, ent.pod.Key())
		e.stats.Enrolled = len(e.pods)
		e.stats.Released++
	}
	e.mu.Unlock()
	var errs []error
	if removeRules {
		if err := capture.Remove(ent.ns, e.cfg); err != nil {
			errs = append(errs, err)
		}
	}
	if e.opts.OnReleased != nil {
		e.opts.OnReleased(ent.pod.PodRef)
	}
	if err := ent.lns.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := ent.ns.Close(); err != nil {
		errs = append(errs, err)
	}
	if removeRules {
		e.log.Info("pod released", "pod", ent.pod.PodRef.String())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("enroll: release %s: %w", ent.pod.PodRef, err)
	}
	return nil
}

// ReleasePod is Release for a pod that may not be in the registry, for
// example one enrolled by an earlier ztunnel whose namespace lost the ambient
// label while no ztunnel ran: when not registered, its namespace is found by
// path or IP and any capture rules in it are removed.
func (e *Enroller) ReleasePod(ctx context.Context, pod Pod) error {
	unlock := e.lock(pod.Key())
	ent, err := e.get(pod.Key())
	if err != nil {
		unlock()
		return err
	}
	if ent != nil {
		unlock()
		return e.Release(ctx, pod.PodRef)
	}
	defer unlock()
	ns, err := e.openNetns(ctx, pod)
	if err != nil {
		// No namespace: nothing of the pod's is left to remove.
		e.log.Debug("release of an unknown pod: namespace not found", "pod", pod.PodRef.String(), "err", err)
		return nil
	}
	defer ns.Close()
	id, err := fdID(ns.Fd())
	if err != nil || e.hostIDs[id] {
		return fmt.Errorf("enroll: release %s: refusing to touch namespace %s (host's or unidentifiable: %v)", pod.PodRef, ns.Name(), err)
	}
	st, err := capture.Check(ns, e.cfg)
	if err != nil {
		return fmt.Errorf("enroll: release %s: %w", pod.PodRef, err)
	}
	if !st.Present() {
		return nil
	}
	if err := capture.Remove(ns, e.cfg); err != nil {
		return fmt.Errorf("enroll: release %s: %w", pod.PodRef, err)
	}
	e.log.Info("removed rules of an unregistered pod", "pod", pod.PodRef.String())
	return nil
}

// Check returns nil when the pod is enrolled, its rules are current and its
// listeners are open; ErrNotEnrolled (wrapped) when it is not enrolled.
func (e *Enroller) Check(ctx context.Context, ref PodRef) error {
	unlock := e.lock(ref.Key())
	defer unlock()
	ent, err := e.get(ref.Key())
	if err != nil {
		return err
	}
	if ent == nil {
		return fmt.Errorf("enroll: check %s: %w", ref, ErrNotEnrolled)
	}
	st, err := capture.Check(ent.ns, e.cfg)
	if err != nil {
		return fmt.Errorf("enroll: check %s: %w", ref, err)
	}
	if !st.Current {
		return fmt.Errorf("enroll: check %s: capture rules not current: %q", ref, st.Problems)
	}
	for _, ln := range []net.Listener{ent.lns.Outbound, ent.lns.Inbound, ent.lns.HBONE} {
		if err := listenerOpen(ln); err != nil {
			return fmt.Errorf("enroll: check %s: %w", ref, err)
		}
	}
	return nil
}

// listenerOpen fails when ln has been closed.
func listenerOpen(ln net.Listener) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return fmt.Errorf("listener %s: %w", ln.Addr(), err)
	}
	if err := rc.Control(func(uintptr) {}); err != nil {
		return fmt.Errorf("listener %s is closed: %w", ln.Addr(), err)
	}
	return nil
}

// Reconcile makes the registry match wanted: every registered pod not in
// wanted (by key) is released, every wanted pod is enrolled (idempotently;
// re-adopting pods whose rules are current). Use it when a namespace gains
// or loses the ambient label, and after a restart. Errors are collected; one
// pod's failure does not stop the others.
func (e *Enroller) Reconcile(ctx context.Context, wanted []Pod) error {
	want := make(map[string]bool, len(wanted))
	for _, p := range wanted {
		want[p.Key()] = true
	}
	e.mu.Lock()
	var drop []PodRef
	for key, ent := range e.pods {
		if !want[key] {
			drop = append(drop, ent.pod.PodRef)
		}
	}
	e.mu.Unlock()

	var (
		errMu sync.Mutex
		errs  []error
	)
	record := func(err error) {
		if err != nil {
			errMu.Lock()
			errs = append(errs, err)
			errMu.Unlock()
		}
	}
	for _, ref := range drop {
		record(e.Release(ctx, PodRef{Namespace: ref.Namespace, Name: ref.Name, UID: ref.UID}))
	}
	work := make(chan Pod)
	var wg sync.WaitGroup
	for range min(e.opts.ReconcileWorkers, max(len(wanted), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				record(e.Enroll(ctx, p))
			}
		}()
	}
	for _, p := range wanted {
		if ctx.Err() != nil {
			record(fmt.Errorf("enroll: reconcile: %w", ctx.Err()))
			break
		}
		work <- p
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("enroll: reconcile: %w", err)
	}
	return nil
}

// Enrolled lists the enrolled pods.
func (e *Enroller) Enrolled() []Pod {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Pod, 0, len(e.pods))
	for _, ent := range e.pods {
		p := ent.pod
		p.IPs = slices.Clone(p.IPs)
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pod) int {
		if a.Namespace != b.Namespace {
			if a.Namespace < b.Namespace {
				return -1
			}
			return 1
		}
		if a.Name < b.Name {
			return -1
		}
		if a.Name > b.Name {
			return 1
		}
		return 0
	})
	return out
}

// Stats returns the counters.
func (e *Enroller) Stats() Stats {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.stats
}

// Close is the ztunnel's shutdown: it calls OnReleased and closes every
// pod's listeners and namespace handle, but leaves the capture rules in
// place, so pods stay captured (connections fail rather than bypass the
// mesh) until the next ztunnel re-adopts them with Reconcile. Later calls
// fail.
func (e *Enroller) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	ents := make([]*entry, 0, len(e.pods))
	for _, ent := range e.pods {
		ents = append(ents, ent)
	}
	e.mu.Unlock()
	var errs []error
	for _, ent := range ents {
		unlock := e.lock(ent.pod.Key())
		errs = append(errs, e.releaseLocked(ent, false))
		unlock()
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("enroll: close: %w", err)
	}
	return nil
}
