//go:build linux

package agent

import (
	"context"
	"crypto/x509"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	pb "istio.io/api/security/v1alpha1"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/caclient"
	"github.com/ambit-mesh/ambit/pkg/mtls"
	"github.com/ambit-mesh/ambit/pkg/pemutil"
	"github.com/ambit-mesh/ambit/ztunnel/capture"
	"github.com/ambit-mesh/ambit/ztunnel/certs"
	"github.com/ambit-mesh/ambit/ztunnel/enroll"
	"github.com/ambit-mesh/ambit/ztunnel/internal/netnstest"
	"github.com/ambit-mesh/ambit/ztunnel/proxy"
	"github.com/ambit-mesh/ambit/ztunnel/state"
)

var podCycles = flag.Int("pod-cycles", 1000, "pod create/delete cycles in TestPodCyclesLeakNothing")

// caService signs with a real CA (the authorization side is istiod-lite's).
type caService struct {
	pb.UnimplementedIstioCertificateServiceServer
	authority *ca.CA
}

func (s caService) CreateCertificate(_ context.Context, req *pb.IstioCertificateRequest) (*pb.IstioCertificateResponse, error) {
	issued, err := s.authority.Sign([]byte(req.GetCsr()), time.Hour)
	if err != nil {
		return nil, err
	}
	var chain []string
	for _, c := range issued.Chain {
		chain = append(chain, string(pemutil.EncodeCertificates([]*x509.Certificate{c})))
	}
	return &pb.IstioCertificateResponse{CertChain: append(chain, string(s.authority.RootsPEM()))}, nil
}

// TestPodCyclesLeakNothing runs pods through ztunnel's whole enrollment
// path, as CNI ADD and DEL drive it: a network namespace appears, the pod
// is enrolled (rules, listeners), gets its certificate and is served by
// the proxy; then it is released and its namespace deleted. After 1,000
// cycles no goroutine, file descriptor, certificate or enrolled pod is
// left over.
func TestPodCyclesLeakNothing(t *testing.T) {
	netnstest.RequireRoot(t)
	authority, err := ca.NewSelfSigned(ca.Options{})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := mtls.NewBundle(authority.TrustDomain(), authority.Roots())
	if err != nil {
		t.Fatal(err)
	}
	g := grpc.NewServer()
	pb.RegisterIstioCertificateServiceServer(g, caService{authority: authority})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(ln) }()
	defer g.Stop()
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	quiet := slog.New(slog.DiscardHandler)
	store := state.NewStore()
	px, err := proxy.New(proxy.Options{Bundle: bundle, Router: &Router{Store: store, Balancer: state.NewBalancer(store, state.BalancerOptions{})},
		Authz: &Authorizer{Store: store}, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	served := &servedPods{
		proxy: px, certs: certs.NewManager(ctx, caclient.New(conn), time.Hour, quiet),
		serviceAccount: func(context.Context, string, string) (string, error) { return "web", nil },
		trustDomain:    authority.TrustDomain(), log: quiet, ctx: ctx, byKey: map[string]*servedPod{},
	}
	capCfg := capture.DefaultConfig()
	enroller, err := enroll.NewEnroller(enroll.EnrollerOptions{Capture: &capCfg, OnEnrolled: served.start, OnReleased: served.stop, Log: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer enroller.Close()

	cycle := func(i int) error {
		ns, err := netnstest.New()
		if err != nil {
			return err
		}
		defer ns.Close()
		pod := enroll.Pod{
			PodRef: enroll.PodRef{Namespace: "apps", Name: fmt.Sprintf("web-%d", i), UID: fmt.Sprintf("uid-%d", i)},
			Netns:  fmt.Sprintf("/proc/self/fd/%d", ns.Fd()),
			IPs:    []netip.Addr{netip.MustParseAddr("10.250.0.9")},
		}
		if err := enroller.Enroll(ctx, pod); err != nil {
			return err
		}
		// Wait until the proxy serves the pod: the certificate is in.
		deadline := time.Now().Add(10 * time.Second)
		for !served.serving(pod.Key()) {
			if time.Now().After(deadline) {
				return fmt.Errorf("pod %d never served", i)
			}
			time.Sleep(time.Millisecond)
		}
		return enroller.Release(ctx, pod.PodRef)
	}
	// Warm up (lazily started runtime and library goroutines), then measure.
	for i := range 5 {
		if err := cycle(i); err != nil {
			t.Fatal(err)
		}
	}
	goroutines, fds := settle(), countFDs(t)
	for i := range *podCycles {
		if err := cycle(i); err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
	}
	if got := settle(); got > goroutines+2 {
		t.Errorf("goroutines: %d before, %d after %d pod cycles", goroutines, got, *podCycles)
	}
	if got := countFDs(t); got > fds+2 {
		t.Errorf("file descriptors: %d before, %d after %d pod cycles", fds, got, *podCycles)
	}
	if n := len(enroller.Enrolled()); n != 0 {
		t.Errorf("%d pods still enrolled", n)
	}
	if ids := served.certs.Identities(); len(ids) != 0 {
		t.Errorf("certificates still held: %v", ids)
	}
	if n := served.count(); n != 0 {
		t.Errorf("%d pods still served", n)
	}
}

func (s *servedPods) serving(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	sp := s.byKey[key]
	return sp != nil && sp.serving != nil
}

func (s *servedPods) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byKey)
}

// settle waits for exiting goroutines and returns the count.
func settle() int {
	n := runtime.NumGoroutine()
	for range 50 {
		time.Sleep(20 * time.Millisecond)
		m := runtime.NumGoroutine()
		if m == n {
			return m
		}
		n = m
	}
	return n
}

func countFDs(t *testing.T) int {
	n, err := netnstest.CountFDs()
	if err != nil {
		t.Fatal(err)
	}
	return n
}
