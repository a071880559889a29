//go:build linux

package enroll

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ambit-mesh/ambit/ztunnel/enroll/wire"
)

// ServerOptions configure a Server.
type ServerOptions struct {
	// Handler carries out enrollment (required).
	Handler Handler
	// Decider decides whether an added pod is captured (required).
	Decider Decider
	// Log receives one line per request outcome (slog.Default when nil).
	Log *slog.Logger
	// RequestTimeout bounds the handling of one request (decision and
	// enrollment); 15s when zero. Keep it below the plugin's timeout (20s by
	// default) so that the plugin gets the real error rather than a timeout.
	RequestTimeout time.Duration
	// ReadTimeout bounds reading a request after the connection is
	// accepted; 5s when zero.
	ReadTimeout time.Duration
	// MaxConcurrent bounds requests handled at once; more wait (within their
	// timeout). 32 when zero.
	MaxConcurrent int
	// AllowedUIDs are the peer user ids accepted (SO_PEERCRED); root and
	// this process's effective uid when empty.
	AllowedUIDs []uint32
}

// Server answers the CNI plugin's requests on a Unix socket. Stopping it
// releases nothing: enrolled pods stay captured while the ztunnel restarts.
type Server struct {
	opts ServerOptions
	log  *slog.Logger
	sem  chan struct{}
	wg   sync.WaitGroup
}

// NewServer checks opts and returns a server.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.Handler == nil {
		return nil, errors.New("enroll: server: handler is required")
	}
	if opts.Decider == nil {
		return nil, errors.New("enroll: server: decider is required")
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 15 * time.Second
	}
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = 5 * time.Second
	}
	if opts.MaxConcurrent <= 0 {
		opts.MaxConcurrent = 32
	}
	if len(opts.AllowedUIDs) == 0 {
		opts.AllowedUIDs = []uint32{0, uint32(os.Geteuid())}
	}
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	return &Server{opts: opts, log: log.With("component", "enroll"), sem: make(chan struct{}, opts.MaxConcurrent)}, nil
}

// Listen creates the server's socket at path: the directory is created
// (0750) if missing, a socket file left by an earlier process is removed, and
// the socket is made 0600 (the plugin runs as root).
func Listen(path string) (net.Listener, error) {
	if path == "" {
		return nil, errors.New("enroll: listen: socket path is empty")
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("enroll: listen: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != os.ModeSocket {
			return nil, fmt.Errorf("enroll: listen: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("enroll: listen: remove stale socket: %w", err)
		}
	}
	// The directory (0750) keeps others out until the chmod below; the
	// process umask is not changed, as it is process-wide.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("enroll: listen: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("enroll: listen: %w", err)
	}
	return ln, nil
}

// ListenAndServe is Listen then Serve.
func (s *Server) ListenAndServe(ctx context.Context, path string) error {
	ln, err := Listen(path)
	if err != nil {
		return err
	}
	return s.Serve(ctx, ln)
}

// Serve accepts connections on ln until ctx is cancelled, then closes ln and
// waits for requests in progress (each bounded by RequestTimeout). It
// returns nil after a cancellation, or the accept error that stopped it.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	defer s.wg.Wait()
	// Requests in progress finish even when ctx is cancelled: a half-done
	// enrollment is worse than a late one.
	base := context.WithoutCancel(ctx)
	var tempDelay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				tempDelay = min(max(2*tempDelay, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed; retrying", "err", err, "delay", tempDelay)
				select {
				case <-time.After(tempDelay):
				case <-ctx.Done():
					return nil
				}
				continue
			}
			_ = ln.Close()
			return fmt.Errorf("enroll: accept: %w", err)
		}
		tempDelay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveConn(base, conn)
		}()
	}
}

func (s *Server) serveConn(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	pid, err := s.checkPeer(conn)
	if err != nil {
		s.log.Warn("refused connection", "err", err)
		return
	}
	if pid > 0 {
		ctx = context.WithValue(ctx, peerPIDKey{}, pid)
	}
	_ = conn.SetReadDeadline(time.Now().Add(s.opts.ReadTimeout))
	var req wire.Request
	resp := func() wire.Response {
		if err := wire.ReadMessage(conn, &req); err != nil {
			return errorResponse(fmt.Errorf("bad request: %w", err))
		}
		if err := req.Validate(); err != nil {
			return errorResponse(fmt.Errorf("bad request: %w", err))
		}
		ctx, cancel := context.WithTimeout(ctx, s.opts.RequestTimeout)
		defer cancel()
		select {
		case s.sem <- struct{}{}:
		case <-ctx.Done():
			return errorResponse(fmt.Errorf("server busy: %w", ctx.Err()))
		}
		defer func() { <-s.sem }()
		return s.dispatch(ctx, &req)
	}()
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := wire.WriteMessage(conn, resp); err != nil {
		s.log.Warn("could not answer", "op", req.Op, "pod", req.Pod.Namespace+"/"+req.Pod.Name, "err", err)
	}
}

func errorResponse(err error) wire.Response {
	return wire.Response{Version: wire.Version, Status: wire.StatusError, Message: err.Error()}
}

func (s *Server) dispatch(ctx context.Context, req *wire.Request) wire.Response {
	pod := FromWire(req.Pod)
	log := s.log.With("op", req.Op, "pod", pod.PodRef.String(), "container", pod.ContainerID)
	start := time.Now()
	status, err := s.do(ctx, req.Op, pod)
	if err != nil {
		log.Error("enrollment request failed", "err", err, "took", time.Since(start))
		return errorResponse(err)
	}
	log.Info("enrollment request", "status", status, "took", time.Since(start))
	return wire.Response{Version: wire.Version, Status: status}
}

func (s *Server) do(ctx context.Context, op wire.Op, pod Pod) (wire.Status, error) {
	switch op {
	case wire.OpAdd:
		d, err := s.opts.Decider.Decide(ctx, pod)
		if err != nil {
			return "", fmt.Errorf("decide whether %s is captured: %w", pod.PodRef, err)
		}
		if d != Capture {
			// A new sandbox of a pod that was captured before (its
			// namespace has been unlabelled since): let go of the old one.
			if err := s.opts.Handler.Release(ctx, PodRef{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID}); err != nil {
				return "", fmt.Errorf("release %s: %w", pod.PodRef, err)
			}
			return wire.StatusSkipped, nil
		}
		if err := s.opts.Handler.Enroll(ctx, pod); err != nil {
			return "", fmt.Errorf("enroll %s: %w", pod.PodRef, err)
		}
		return wire.StatusEnrolled, nil
	case wire.OpDel:
		if err := s.opts.Handler.Release(ctx, pod.PodRef); err != nil {
			return "", fmt.Errorf("release %s: %w", pod.PodRef, err)
		}
		return wire.StatusReleased, nil
	case wire.OpCheck:
		d, err := s.opts.Decider.Decide(ctx, pod)
		if err != nil {
			return "", fmt.Errorf("decide whether %s is captured: %w", pod.PodRef, err)
		}
		if d != Capture {
			return wire.StatusOK, nil
		}
		if err := s.opts.Handler.Check(ctx, pod.PodRef); err != nil {
			return "", fmt.Errorf("check %s: %w", pod.PodRef, err)
		}
		return wire.StatusOK, nil
	default:
		return "", fmt.Errorf("unknown op %q", op)
	}
}

// peerPIDKey carries the CNI plugin's process id (as this process sees it)
// in a request's context: the plugin runs in the node's mount namespace,
// so /proc/<pid>/root reaches netns paths not mounted into ours.
type peerPIDKey struct{}

func peerPID(ctx context.Context) int32 {
	pid, _ := ctx.Value(peerPIDKey{}).(int32)
	return pid
}

// checkPeer accepts only the configured users (the plugin runs as root)
// and returns the peer's pid.
func (s *Server) checkPeer(conn net.Conn) (int32, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, nil // not a Unix socket (tests with other transports)
	}
	rc, err := uc.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var cerr error
	if err := rc.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("peer credentials: %w", err)
	}
	if cerr != nil {
		return 0, fmt.Errorf("peer credentials: %w", cerr)
	}
	for _, uid := range s.opts.AllowedUIDs {
		if cred.Uid == uid {
			return cred.Pid, nil
		}
	}
	return 0, fmt.Errorf("peer pid %d uid %d is not allowed", cred.Pid, cred.Uid)
}
