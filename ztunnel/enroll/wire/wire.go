// Package wire is the enrollment protocol between the ambit CNI plugin and the
// ztunnel on the same node, and its client.
//
// One request and one response per connection, over a Unix stream socket
// owned by root on the host (by default /var/run/ambit/ztunnel.sock). Both are
// single JSON objects carrying the protocol version; the client writes its
// request and half-closes, the server answers and closes. Either side refuses
// a message larger than MaxMessageSize, and both bound the exchange with
// deadlines, so a stuck peer costs at most a timeout.
//
// The package has no dependencies beyond the standard library so that the
// plugin binary stays small.
package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"time"
)

// Version is the protocol version this package speaks. A server answers a
// request of another version with StatusError.
const Version = 1

// MaxMessageSize bounds a request or a response (JSON bytes).
const MaxMessageSize = 64 << 10

// DefaultSocketPath is where the ztunnel listens on the host.
const DefaultSocketPath = "/var/run/ambit/ztunnel.sock"

// Op is what the plugin asks for.
type Op string

// Operations, one per CNI command.
const (
	// OpAdd (CNI ADD): decide whether the pod is captured and, if so, enroll
	// it before answering.
	OpAdd Op = "add"
	// OpDel (CNI DEL): release the pod; idempotent.
	OpDel Op = "del"
	// OpCheck (CNI CHECK): verify that a captured pod's enrollment is intact.
	OpCheck Op = "check"
)

// Pod identifies a pod and where its network lives, as the CNI plugin knows
// it from CNI_ARGS, CNI_NETNS, CNI_CONTAINERID and the previous result.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
	// ContainerID is the sandbox (infra container) id.
	ContainerID string `json:"containerID,omitempty"`
	// Netns is the path of the pod's network namespace on the host
	// (CNI_NETNS), for example /var/run/netns/cni-<uuid>.
	Netns string `json:"netns,omitempty"`
	// IPs are the pod's addresses from the primary plugin's result.
	IPs []netip.Addr `json:"ips,omitempty"`
}

// Request is what the plugin sends.
type Request struct {
	Version int `json:"version"`
	Op      Op  `json:"op"`
	Pod     Pod `json:"pod"`
}

// Status is the outcome the server reports.
type Status string

// Outcomes.
const (
	// StatusEnrolled: ADD of a captured pod; rules and listeners are in place.
	StatusEnrolled Status = "enrolled"
	// StatusSkipped: ADD of a pod that is not captured; nothing was touched.
	StatusSkipped Status = "skipped"
	// StatusReleased: DEL done (also when there was nothing to release).
	StatusReleased Status = "released"
	// StatusOK: CHECK passed (the pod is enrolled and intact, or not captured).
	StatusOK Status = "ok"
	// StatusError: the server could not do what was asked; Message says why.
	// The plugin fails the CNI command.
	StatusError Status = "error"
)

// Response is what the server answers.
type Response struct {
	Version int    `json:"version"`
	Status  Status `json:"status"`
	Message string `json:"message,omitempty"`
}

// Validate reports a request the server must refuse.
func (r *Request) Validate() error {
	if r.Version != Version {
		return fmt.Errorf("unsupported protocol version %d (server speaks %d)", r.Version, Version)
	}
	switch r.Op {
	case OpAdd, OpDel, OpCheck:
	default:
		return fmt.Errorf("unknown op %q", r.Op)
	}
	if r.Pod.Namespace == "" || r.Pod.Name == "" {
		return errors.New("pod namespace and name are required")
	}
	if r.Op == OpAdd && r.Pod.Netns == "" && len(r.Pod.IPs) == 0 {
		return errors.New("add needs the pod's netns path or IPs")
	}
	for _, ip := range r.Pod.IPs {
		if !ip.IsValid() {
			return errors.New("invalid pod IP")
		}
	}
	return nil
}

// ReadMessage decodes one JSON message of at most MaxMessageSize bytes from r
// into v. It reads only as far as the end of the first JSON value, so the
// peer does not need to half-close.
func ReadMessage(r io.Reader, v any) error {
	lr := &io.LimitedReader{R: r, N: MaxMessageSize}
	if err := json.NewDecoder(lr).Decode(v); err != nil {
		if lr.N <= 0 {
			return fmt.Errorf("message larger than %d bytes", MaxMessageSize)
		}
		if errors.Is(err, io.EOF) {
			return errors.New("empty message")
		}
		return fmt.Errorf("decode message: %w", err)
	}
	return nil
}

// WriteMessage encodes v as one JSON message.
func WriteMessage(w io.Writer, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode message: %w", err)
	}
	if len(data) > MaxMessageSize {
		return fmt.Errorf("message of %d bytes is larger than %d", len(data), MaxMessageSize)
	}
	data = append(data, '\n')
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("write message: %w", err)
	}
	return nil
}

// UnavailableError is a failure to exchange a request with the server: it
// could not be reached, or did not answer in time, or the answer was
// unreadable. The request may or may not have been carried out.
type UnavailableError struct {
	Path string
	Err  error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("ztunnel enrollment server at %s unavailable: %v", e.Path, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// RemoteError is a StatusError answer: the server was reached and refused or
// failed the request.
type RemoteError struct {
	Op      Op
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("ztunnel %s failed: %s", e.Op, e.Message)
}

// IsUnavailable reports whether err is (or wraps) an *UnavailableError.
func IsUnavailable(err error) bool {
	var u *UnavailableError
	return errors.As(err, &u)
}

// Client sends requests to the ztunnel's enrollment server.
type Client struct {
	// Path is the server's socket (DefaultSocketPath when empty).
	Path string
	// Timeout bounds the whole exchange, on top of the context (10s when
	// zero).
	Timeout time.Duration
}

// Do sends req (its Version is filled in) and returns the server's answer.
// A StatusError answer is returned as a *RemoteError, a transport failure as
// an *UnavailableError.
func (c *Client) Do(ctx context.Context, req Request) (Response, error) {
	path := c.Path
	if path == "" {
		path = DefaultSocketPath
	}
	timeout := c.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req.Version = Version

	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return Response{}, &UnavailableError{Path: path, Err: err}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return Response{}, &UnavailableError{Path: path, Err: err}
		}
	}
	// Abort blocked I/O when ctx is cancelled before the deadline.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := WriteMessage(conn, req); err != nil {
		return Response{}, &UnavailableError{Path: path, Err: err}
	}
	if uc, ok := conn.(*net.UnixConn); ok {
		if err := uc.CloseWrite(); err != nil {
			return Response{}, &UnavailableError{Path: path, Err: fmt.Errorf("half-close: %w", err)}
		}
	}
	var resp Response
	if err := ReadMessage(conn, &resp); err != nil {
		return Response{}, &UnavailableError{Path: path, Err: err}
	}
	if resp.Version != Version {
		return Response{}, &UnavailableError{Path: path, Err: fmt.Errorf("answer has protocol version %d, want %d", resp.Version, Version)}
	}
	switch resp.Status {
	case StatusError:
		return resp, &RemoteError{Op: req.Op, Message: resp.Message}
	case StatusEnrolled, StatusSkipped, StatusReleased, StatusOK:
		return resp, nil
	default:
		return Response{}, &UnavailableError{Path: path, Err: fmt.Errorf("unknown status %q in answer", resp.Status)}
	}
}
