// Package enroll is the ztunnel's side of pod enrollment: the server the CNI
// plugin talks to (Server, on the protocol of package wire), the decision
// whether a pod is captured (Decider), and a ready-made Handler (Enroller)
// that captures a pod inside its network namespace (capture.Apply), opens
// the ztunnel's listeners there (inpod.ListenAll), keeps a registry of
// enrolled pods and hands their listeners to the proxy.
//
// See docs/enrollment.md.
package enroll

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/ambit-mesh/ambit/ztunnel/enroll/wire"
)

// PodRef names a pod, and optionally one of its sandboxes.
type PodRef struct {
	Namespace string
	Name      string
	// UID is the pod's UID (K8S_POD_UID); the registry key when set.
	UID string
	// ContainerID is the sandbox id (CNI_CONTAINERID). When both the
	// request's and the registered pod's are set and differ, Release ignores
	// the request: it is a late DEL for a sandbox that has been replaced.
	ContainerID string
}

// Key is the registry key: the UID, or namespace/name when the UID is
// unknown.
func (r PodRef) Key() string {
	if r.UID != "" {
		return r.UID
	}
	return r.Namespace + "/" + r.Name
}

func (r PodRef) String() string {
	if r.UID != "" {
		return fmt.Sprintf("%s/%s (uid %s)", r.Namespace, r.Name, r.UID)
	}
	return r.Namespace + "/" + r.Name
}

// Pod is a pod to enroll: its name and where its network lives.
type Pod struct {
	PodRef
	// Netns is the path of the pod's network namespace (CNI_NETNS, or
	// /proc/<pid>/ns/net). When empty or no longer openable, the namespace
	// is found by IP (FindNetnsByIP).
	Netns string
	// IPs are the pod's addresses.
	IPs []netip.Addr
}

// FromWire converts the protocol's pod.
func FromWire(p wire.Pod) Pod {
	return Pod{
		PodRef: PodRef{Namespace: p.Namespace, Name: p.Name, UID: p.UID, ContainerID: p.ContainerID},
		Netns:  p.Netns,
		IPs:    slices.Clone(p.IPs),
	}
}

// Handler carries out enrollment. Enroller is the real one; every method must
// be idempotent and safe for concurrent use.
type Handler interface {
	// Enroll captures the pod: when it returns nil, the pod's traffic is
	// redirected and the ztunnel's listeners are open in its namespace.
	Enroll(ctx context.Context, pod Pod) error
	// Release undoes Enroll; releasing a pod that is not enrolled is not an
	// error.
	Release(ctx context.Context, pod PodRef) error
	// Check returns nil when the pod is enrolled and its enrollment intact,
	// ErrNotEnrolled (wrapped) when it is not enrolled.
	Check(ctx context.Context, pod PodRef) error
}

// ErrNotEnrolled is returned (wrapped) by Check for a pod that is not
// enrolled.
var ErrNotEnrolled = errors.New("pod is not enrolled")

// Decision is whether a pod is captured.
type Decision int

const (
	// Skip: the pod is not captured and is left untouched.
	Skip Decision = iota
	// Capture: the pod is enrolled.
	Capture
)

func (d Decision) String() string {
	switch d {
	case Skip:
		return "skip"
	case Capture:
		return "capture"
	default:
		return fmt.Sprintf("Decision(%d)", int(d))
	}
}

// Decider decides whether a pod is captured, from what the ztunnel knows of
// namespaces and pods (the Kubernetes API, or the control plane's workload
// data). On CNI ADD the pod has just been created, so an implementation
// backed by a cache may need to wait (within ctx) for the pod to appear, or
// decide from its namespace alone. An error fails the CNI command (the
// kubelet retries), so return one only when the answer is really unknown.
type Decider interface {
	Decide(ctx context.Context, pod Pod) (Decision, error)
}

// DeciderFunc adapts a function to Decider.
type DeciderFunc func(ctx context.Context, pod Pod) (Decision, error)

// Decide calls f.
func (f DeciderFunc) Decide(ctx context.Context, pod Pod) (Decision, error) { return f(ctx, pod) }

// Labels shared with Istio.
const (
	// LabelDataplaneMode on a namespace or pod selects the data plane.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// ModeAmbient enrolls (namespace, or a single pod).
	ModeAmbient = "ambient"
	// ModeNone on a pod keeps it out of an ambient namespace.
	ModeNone = "none"
)

// AmbientDecision is Istio's rule: host-network pods are never captured; a
// pod labelled istio.io/dataplane-mode=none is not captured; a pod labelled
// ambient, or any pod in a namespace labelled ambient, is captured.
func AmbientDecision(namespaceLabels, podLabels map[string]string, hostNetwork bool) Decision {
	if hostNetwork {
		return Skip
	}
	switch podLabels[LabelDataplaneMode] {
	case ModeNone:
		return Skip
	case ModeAmbient:
		return Capture
	}
	if namespaceLabels[LabelDataplaneMode] == ModeAmbient {
		return Capture
	}
	return Skip
}
