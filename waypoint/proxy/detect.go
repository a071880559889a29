package proxy

import (
	"bytes"
	"errors"
	"net"
	"os"
	"time"

	"github.com/ambit-mesh/ambit/pkg/hbone"
)

// h2Preface is the HTTP/2 client connection preface.
const h2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// maxRequestLine bounds how much detection reads looking for an HTTP/1.x
// request line.
const maxRequestLine = 4096

// detect reads the first bytes of conn (within timeout) and classifies them
// as Envoy's http_inspector does: "h2c" for the HTTP/2 preface, "http/1.1"
// for an HTTP/1.x request line, "" for anything else (including silence:
// server-first protocols). The bytes read are returned to be replayed.
func detect(conn hbone.Conn, timeout time.Duration) (proto string, prefix []byte, err error) {
	if timeout > 0 {
		_ = conn.SetReadDeadline(time.Now().Add(timeout))
		defer func() { _ = conn.SetReadDeadline(time.Time{}) }()
	}
	buf := make([]byte, 0, 512)
	tmp := make([]byte, 512)
	for {
		if p, done := classify(buf); done {
			return p, buf, nil
		}
		n, rerr := conn.Read(tmp)
		buf = append(buf, tmp[:n]...)
		if rerr != nil {
			if p, done := classify(buf); done {
				return p, buf, nil
			}
			if errors.Is(rerr, os.ErrDeadlineExceeded) {
				return "", buf, nil
			}
			return "", buf, rerr
		}
	}
}

// classify decides on the bytes so far; done is false while more bytes
// could change the answer.
func classify(b []byte) (proto string, done bool) {
	if len(b) == 0 {
		return "", false
	}
	n := min(len(b), len(h2Preface))
	if string(b[:n]) == h2Preface[:n] {
		if n == len(h2Preface) {
			return "h2c", true
		}
		return "", false
	}
	// Method: an uppercase token, then a space.
	i := 0
	for i < len(b) && b[i] >= 'A' && b[i] <= 'Z' && i < 20 {
		i++
	}
	if i == len(b) {
		return "", false
	}
	if i == 0 || b[i] != ' ' {
		return "", true
	}
	eol := bytes.Index(b, []byte("\r\n"))
	if eol < 0 {
		if len(b) >= maxRequestLine {
			return "", true
		}
		// Target and version may not contain control characters.
		for _, c := range b[i+1:] {
			if c < 0x20 && c != '\r' {
				return "", true
			}
		}
		return "", false
	}
	line := b[:eol]
	sp := bytes.LastIndexByte(line, ' ')
	if sp <= i {
		return "", true
	}
	v := string(line[sp+1:])
	if v == "HTTP/1.1" || v == "HTTP/1.0" {
		return "http/1.1", true
	}
	return "", true
}

// prefixConn replays bytes read during detection before reading on.
type prefixConn struct {
	hbone.Conn
	prefix []byte
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(p, c.prefix)
		c.prefix = c.prefix[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

var _ net.Conn = (*prefixConn)(nil)
