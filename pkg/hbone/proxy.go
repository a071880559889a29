package hbone

import (
	"errors"
	"io"
	"net"
)

// closeWriter is implemented by *net.TCPConn and HBONE streams.
type closeWriter interface{ CloseWrite() error }

// Proxy copies a→b and b→a until both directions end, propagating each
// direction's end (FIN or END_STREAM) to the other side as a half-close.
// If either direction fails, both connections are closed. It returns the
// bytes copied each way and the errors other than a clean end. The caller
// closes a and b afterwards.
func Proxy(a, b net.Conn) (aToB, bToA int64, err error) {
	type result struct {
		n   int64
		err error
	}
	back := make(chan result, 1)
	go func() {
		n, err := halfCopy(b, a)
		back <- result{n, err}
	}()
	aToB, errAB := halfCopy(a, b)
	r := <-back
	return aToB, r.n, errors.Join(errAB, r.err)
}

// halfCopy copies src→dst, then half-closes dst. On error both are closed so
// the opposite direction unblocks too.
func halfCopy(src, dst net.Conn) (int64, error) {
	n, err := copyBuffer(dst, src)
	if err != nil {
		_ = src.Close()
		_ = dst.Close()
		return n, err
	}
	if cw, ok := dst.(closeWriter); ok {
		if cerr := cw.CloseWrite(); cerr != nil && !errors.Is(cerr, net.ErrClosed) {
			return n, cerr
		}
	} else {
		_ = dst.Close()
	}
	return n, nil
}

// copyBuffer copies with a pooled buffer. When both ends are TCP sockets
// io.Copy's ReadFrom path lets the kernel splice instead.
func copyBuffer(dst io.Writer, src io.Reader) (int64, error) {
	if _, ok := src.(*net.TCPConn); ok {
		if _, ok := dst.(*net.TCPConn); ok {
			return io.Copy(dst, src)
		}
	}
	buf := getBuf()
	defer putBuf(buf)
	// Hide ReadFrom/WriteTo so the pooled buffer is used.
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *buf)
}
