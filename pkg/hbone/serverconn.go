package hbone

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/ambit-mesh/ambit/pkg/identity"
)

const (
	defaultWindow   = 65535 // RFC 9113 initial flow-control window
	maxWindow       = 1<<31 - 1
	maxHeaderBytes  = 64 << 10
	writeBufferSize = 64 << 10
)

var (
	errStreamReset = errors.New("hbone: stream reset")
	errWriteClosed = errors.New("hbone: write after CloseWrite")
	errConnClosed  = errors.New("hbone: connection closed")
)

// serverConn is the server side of one HTTP/2 connection carrying CONNECT
// streams. One goroutine reads frames; writers share the framer under wmu.
type serverConn struct {
	srv  *Server
	conn *tls.Conn
	peer identity.Identity
	log  *slog.Logger

	wmu  sync.Mutex // guards fr's writer, bw, henc, hbuf, werr
	bw   *bufio.Writer
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
	werr error

	mu               sync.Mutex // guards everything below and every stream's state
	streams          map[uint32]*serverStream
	maxClientStream  uint32
	connSendWindow   int64 // what we may still send on the connection
	connRecvWindow   int64 // what the peer may still send on the connection
	connRecvUnacked  int64 // consumed bytes not yet returned to the peer
	peerStreamWindow int64 // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame     uint32
	goingAway        bool
	idleTimer        *time.Timer // runs while no stream is open
	closed           bool
	closeErr         error
}

func newServerConn(s *Server, c *tls.Conn, peer identity.Identity, log *slog.Logger) *serverConn {
	sc := &serverConn{
		srv: s, conn: c, peer: peer, log: log,
		bw:               bufio.NewWriterSize(c, writeBufferSize),
		streams:          map[uint32]*serverStream{},
		connSendWindow:   defaultWindow,
		connRecvWindow:   int64(s.opts.ConnWindow),
		peerStreamWindow: defaultWindow,
		peerMaxFrame:     16 << 10,
	}
	sc.fr = http2.NewFramer(sc.bw, c)
	sc.fr.SetMaxReadFrameSize(s.opts.MaxFrameSize)
	sc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sc.fr.MaxHeaderListSize = maxHeaderBytes
	sc.henc = hpack.NewEncoder(&sc.hbuf)
	return sc
}

// serve runs the read loop until the connection ends.
func (sc *serverConn) serve() {
	defer sc.close(errConnClosed)
	sc.mu.Lock()
	sc.idleTimer = time.AfterFunc(sc.srv.opts.IdleTimeout, sc.closeIfIdle)
	sc.mu.Unlock()
	o := sc.srv.opts
	_ = sc.conn.SetReadDeadline(time.Now().Add(o.HandshakeTimeout))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(sc.conn, preface); err != nil || string(preface) != http2.ClientPreface {
		sc.log.Warn("refused connection: not an HTTP/2 client preface", "err", err)
		return
	}
	err := sc.writeFrame(func(fr *http2.Framer) error {
		if err := fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: o.MaxConcurrentStreams},
			http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(o.StreamWindow)},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: o.MaxFrameSize},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderBytes},
		); err != nil {
			return err
		}
		return fr.WriteWindowUpdate(0, uint32(o.ConnWindow-defaultWindow))
	})
	if err != nil {
		return
	}
	first := true
	for {
		f, err := sc.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				sc.resetStream(se.StreamID, se.Code, fmt.Errorf("%w: %v", errStreamReset, se))
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				sc.protocolError(http2.ErrCode(ce), fmt.Sprintf("frame error: %v", sc.fr.ErrorDetail()))
				return
			}
			if !errors.Is(err, io.EOF) && !isClosedConnError(err) {
				sc.log.Debug("connection read ended", "err", err)
			}
			return
		}
		if first {
			if _, ok := f.(*http2.SettingsFrame); !ok {
				sc.protocolError(http2.ErrCodeProtocol, "first frame is not SETTINGS")
				return
			}
			first = false
			_ = sc.conn.SetReadDeadline(time.Time{})
		}
		if err := sc.handleFrame(f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				sc.protocolError(http2.ErrCode(ce), err.Error())
			}
			return
		}
	}
}

func (sc *serverConn) handleFrame(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if err := sc.applySettings(f); err != nil {
			return err
		}
		return sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteSettingsAck() })
	case *http2.MetaHeadersFrame:
		return sc.onHeaders(f)
	case *http2.DataFrame:
		return sc.onData(f)
	case *http2.WindowUpdateFrame:
		return sc.onWindowUpdate(f)
	case *http2.RSTStreamFrame:
		sc.mu.Lock()
		st := sc.streams[f.StreamID]
		sc.mu.Unlock()
		if st != nil {
			st.abort(fmt.Errorf("%w by peer: %v", errStreamReset, f.ErrCode), false)
		}
		return nil
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		data := f.Data
		return sc.writeFrame(func(fr *http2.Framer) error { return fr.WritePing(true, data) })
	case *http2.GoAwayFrame:
		sc.mu.Lock()
		sc.goingAway = true
		idle := len(sc.streams) == 0
		sc.mu.Unlock()
		if idle {
			return io.EOF
		}
		return nil
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil // PRIORITY and unknown frame types are ignored, as the RFC requires
}

func (sc *serverConn) applySettings(f *http2.SettingsFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - sc.peerStreamWindow
			sc.peerStreamWindow = int64(s.Val)
			for _, st := range sc.streams {
				st.sendWindow += delta
				if st.sendWindow > maxWindow {
					return http2.ConnectionError(http2.ErrCodeFlowControl)
				}
				st.cond.Broadcast()
			}
		case http2.SettingMaxFrameSize:
			sc.peerMaxFrame = s.Val
		}
		return nil
	})
}

func (sc *serverConn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	sc.mu.Lock()
	if st := sc.streams[id]; st != nil {
		// A second HEADERS on an open stream is trailers; they must end it.
		sc.mu.Unlock()
		if !f.StreamEnded() {
			sc.resetStream(id, http2.ErrCodeProtocol, errStreamReset)
			return nil
		}
		st.remoteEnd()
		return nil
	}
	if id%2 == 0 || id <= sc.maxClientStream {
		sc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	sc.maxClientStream = id
	if sc.goingAway || len(sc.streams) >= int(sc.srv.opts.MaxConcurrentStreams) {
		sc.mu.Unlock()
		sc.writeReset(id, http2.ErrCodeRefusedStream)
		return nil
	}
	st := newServerStream(sc, id)
	sc.streams[id] = st
	if len(sc.streams) == 1 && sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	sc.mu.Unlock()

	req := &Request{Peer: sc.peer, RemoteAddr: sc.conn.RemoteAddr(), LocalAddr: sc.conn.LocalAddr(), stream: st, Header: http.Header{}}
	for _, hf := range f.RegularFields() {
		req.Header.Add(hf.Name, hf.Value)
	}
	refuse := func(code int, format string, args ...any) error {
		go st.finish(Errorf(code, format, args...))
		return nil
	}
	switch {
	case f.Truncated:
		return refuse(http.StatusRequestHeaderFieldsTooLarge, "request headers exceed %d bytes", maxHeaderBytes)
	case f.PseudoValue("method") != http.MethodConnect:
		return refuse(http.StatusMethodNotAllowed, "method %q: HBONE accepts only CONNECT", f.PseudoValue("method"))
	case f.PseudoValue("protocol") != "":
		return refuse(http.StatusBadRequest, "extended CONNECT (:protocol %q) is not HBONE", f.PseudoValue("protocol"))
	case f.PseudoValue("path") != "" || f.PseudoValue("scheme") != "":
		return refuse(http.StatusBadRequest, "CONNECT must not carry :path or :scheme")
	case f.StreamEnded():
		return refuse(http.StatusBadRequest, "CONNECT request ended its stream before the tunnel opened")
	}
	target, err := ParseAuthority(f.PseudoValue("authority"))
	if err != nil {
		return refuse(http.StatusBadRequest, "%v", err)
	}
	req.Target = target
	go st.run(req)
	return nil
}

func (sc *serverConn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // flow control counts padding too
	data := f.Data()
	sc.mu.Lock()
	if n > sc.connRecvWindow {
		sc.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeFlowControl)
	}
	sc.connRecvWindow -= n
	st := sc.streams[id]
	if st == nil || st.remoteEnded {
		unknown := id > sc.maxClientStream
		sc.mu.Unlock()
		if unknown {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		// Data for a stream we already finished: give the connection credit back.
		sc.returnConnCredit(n)
		sc.writeReset(id, http2.ErrCodeStreamClosed)
		return nil
	}
	if n > st.recvWindow {
		sc.mu.Unlock()
		sc.returnConnCredit(n)
		sc.resetStream(id, http2.ErrCodeFlowControl, fmt.Errorf("%w: peer overran the flow-control window", errStreamReset))
		return nil
	}
	st.recvWindow -= n
	padding := n - int64(len(data))
	if st.err == nil {
		st.recv.write(data)
	} else {
		padding = n // nobody will read it
	}
	st.unacked += padding
	if f.StreamEnded() {
		st.remoteEnded = true
	}
	st.cond.Broadcast()
	done := st.doneLocked()
	sc.mu.Unlock()
	if padding > 0 {
		sc.returnConnCredit(padding)
	}
	if done {
		sc.forget(st)
	}
	return nil
}

func (sc *serverConn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	inc := int64(f.Increment)
	if f.StreamID == 0 {
		sc.connSendWindow += inc
		if sc.connSendWindow > maxWindow {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		for _, st := range sc.streams {
			st.cond.Broadcast()
		}
		return nil
	}
	st := sc.streams[f.StreamID]
	if st == nil {
		return nil // a stream that already ended; harmless
	}
	st.sendWindow += inc
	if st.sendWindow > maxWindow {
		go sc.resetStream(f.StreamID, http2.ErrCodeFlowControl, fmt.Errorf("%w: window overflow", errStreamReset))
		return nil
	}
	st.cond.Broadcast()
	return nil
}

// returnConnCredit hands n consumed bytes back to the peer's connection
// window, batching updates to a quarter of the window.
func (sc *serverConn) returnConnCredit(n int64) {
	sc.mu.Lock()
	sc.connRecvUnacked += n
	var inc int64
	if sc.connRecvUnacked >= int64(sc.srv.opts.ConnWindow)/4 {
		inc = sc.connRecvUnacked
		sc.connRecvUnacked = 0
		sc.connRecvWindow += inc
	}
	sc.mu.Unlock()
	if inc > 0 {
		_ = sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(0, uint32(inc)) })
	}
}

func (sc *serverConn) writeFrame(fn func(*http2.Framer) error) error {
	sc.wmu.Lock()
	defer sc.wmu.Unlock()
	if sc.werr != nil {
		return sc.werr
	}
	err := fn(sc.fr)
	if err == nil {
		_ = sc.conn.SetWriteDeadline(time.Now().Add(sc.srv.opts.WriteTimeout))
		err = sc.bw.Flush()
	}
	if err != nil {
		sc.werr = err
		_ = sc.conn.Close()
	}
	return err
}

func (sc *serverConn) writeReset(id uint32, code http2.ErrCode) {
	_ = sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteRSTStream(id, code) })
}

// resetStream sends RST_STREAM and fails the stream locally.
func (sc *serverConn) resetStream(id uint32, code http2.ErrCode, err error) {
	sc.mu.Lock()
	st := sc.streams[id]
	sc.mu.Unlock()
	if st != nil {
		st.abort(err, false)
	}
	sc.writeReset(id, code)
}

// forget drops a finished stream, freeing its concurrency slot.
func (sc *serverConn) forget(st *serverStream) {
	sc.mu.Lock()
	delete(sc.streams, st.id)
	last := sc.goingAway && len(sc.streams) == 0
	if len(sc.streams) == 0 && sc.idleTimer != nil {
		sc.idleTimer.Reset(sc.srv.opts.IdleTimeout)
	}
	sc.mu.Unlock()
	if last {
		sc.close(errConnClosed)
	}
}

func (sc *serverConn) protocolError(code http2.ErrCode, reason string) {
	sc.log.Warn("closing connection: protocol error", "code", code, "reason", reason)
	sc.mu.Lock()
	last := sc.maxClientStream
	sc.mu.Unlock()
	_ = sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteGoAway(last, code, []byte(reason)) })
}

// closeIfIdle runs when the idle timer fires.
func (sc *serverConn) closeIfIdle() {
	sc.mu.Lock()
	idle := len(sc.streams) == 0 && !sc.closed
	sc.mu.Unlock()
	if idle {
		sc.log.Debug("closing idle connection")
		sc.goAway(true)
	}
}

// goAway tells the peer to open no more streams here. With no streams in
// flight the connection closes at once; otherwise when the last one ends.
func (sc *serverConn) goAway(immediate bool) {
	sc.mu.Lock()
	sc.goingAway = true
	last := sc.maxClientStream
	idle := len(sc.streams) == 0
	sc.mu.Unlock()
	_ = sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	if idle || immediate {
		sc.close(ErrServerClosed)
	}
}

// close tears the connection down, failing every stream still open.
func (sc *serverConn) close(err error) {
	sc.mu.Lock()
	if sc.closed {
		sc.mu.Unlock()
		return
	}
	sc.closed = true
	sc.closeErr = err
	if sc.idleTimer != nil {
		sc.idleTimer.Stop()
	}
	streams := make([]*serverStream, 0, len(sc.streams))
	for _, st := range sc.streams {
		streams = append(streams, st)
	}
	sc.mu.Unlock()
	_ = sc.conn.Close()
	for _, st := range streams {
		st.abort(err, false)
	}
}

func isClosedConnError(err error) bool {
	return errors.Is(err, errConnClosed) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed)
}

// serverStream is one CONNECT stream. Its state is guarded by sc.mu.
type serverStream struct {
	sc     *serverConn
	id     uint32
	cond   *sync.Cond
	ctx    context.Context
	cancel context.CancelFunc

	sendWindow  int64
	recvWindow  int64
	unacked     int64 // consumed but not yet returned to the peer's stream window
	recv        chunkQueue
	remoteEnded bool // END_STREAM received
	localEnded  bool // END_STREAM sent
	responded   bool
	err         error // reset or connection failure; ends both directions
	forgotten   bool
	target      string
	readDL      deadline
	writeDL     deadline
}

func newServerStream(sc *serverConn, id uint32) *serverStream {
	ctx, cancel := context.WithCancel(context.Background())
	return &serverStream{
		sc: sc, id: id, cond: sync.NewCond(&sc.mu), ctx: ctx, cancel: cancel,
		sendWindow: sc.peerStreamWindow,
		recvWindow: int64(sc.srv.opts.StreamWindow),
	}
}

func (st *serverStream) run(req *Request) {
	st.target = req.Target.String()
	err := st.sc.srv.handler.ServeHBONE(st.ctx, req)
	st.finish(err)
}

// finish ends the stream after the handler: a refusal gets its status; an
// accepted stream that is not closed both ways is reset.
func (st *serverStream) finish(err error) {
	st.sc.mu.Lock()
	responded := st.responded
	st.sc.mu.Unlock()
	if !responded {
		var se *StatusError
		if !errors.As(err, &se) {
			reason := "handler did not accept the stream"
			if err != nil {
				reason = err.Error()
			}
			se = &StatusError{Code: http.StatusServiceUnavailable, Reason: reason}
		}
		st.sc.log.Info("refused stream", "stream", st.id, "target", st.target, "status", se.Code, "reason", se.Reason)
		if st.respond(se.Code, se.Reason) == nil {
			st.sc.mu.Lock()
			remoteOpen := !st.remoteEnded
			st.sc.mu.Unlock()
			if remoteOpen {
				// RFC 9113 8.1: a complete response may ask the client to stop sending.
				st.sc.writeReset(st.id, http2.ErrCodeNo)
			}
		}
		st.abort(errStreamReset, false)
		return
	}
	_ = st.Close()
}

// respond sends the response HEADERS; non-200 responses end the stream.
func (st *serverStream) respond(code int, reason string) error {
	sc := st.sc
	sc.mu.Lock()
	if st.responded {
		sc.mu.Unlock()
		return errors.New("hbone: stream already answered")
	}
	if st.err != nil {
		err := st.err
		sc.mu.Unlock()
		return err
	}
	st.responded = true
	end := code != http.StatusOK
	if end {
		st.localEnded = true
	}
	sc.mu.Unlock()
	return sc.writeFrame(func(fr *http2.Framer) error {
		sc.hbuf.Reset()
		_ = sc.henc.WriteField(hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
		if reason != "" {
			_ = sc.henc.WriteField(hpack.HeaderField{Name: "x-ambit-reason", Value: sanitizeHeaderValue(reason)})
		}
		return fr.WriteHeaders(http2.HeadersFrameParam{StreamID: st.id, BlockFragment: sc.hbuf.Bytes(), EndHeaders: true, EndStream: end})
	})
}

func sanitizeHeaderValue(s string) string {
	if len(s) > 256 {
		s = s[:256]
	}
	b := []byte(s)
	for i, c := range b {
		if c < 0x20 || c == 0x7f {
			b[i] = ' '
		}
	}
	return string(b)
}

func (st *serverStream) remoteEnd() {
	st.sc.mu.Lock()
	st.remoteEnded = true
	st.cond.Broadcast()
	done := st.doneLocked()
	st.sc.mu.Unlock()
	if done {
		st.sc.forget(st)
	}
}

// doneLocked reports whether both directions ended cleanly and the stream
// can leave the table (once).
func (st *serverStream) doneLocked() bool {
	if st.remoteEnded && st.localEnded && !st.forgotten {
		st.forgotten = true
		return true
	}
	return false
}

// abort fails the stream in both directions; sendReset also tells the peer.
func (st *serverStream) abort(err error, sendReset bool) {
	sc := st.sc
	sc.mu.Lock()
	if st.err == nil {
		st.err = err
	}
	dropped := int64(st.recv.reset())
	st.cond.Broadcast()
	wasForgotten := st.forgotten
	st.forgotten = true
	sc.mu.Unlock()
	st.cancel()
	if dropped > 0 {
		sc.returnConnCredit(dropped)
	}
	if sendReset {
		sc.writeReset(st.id, http2.ErrCodeCancel)
	}
	if !wasForgotten {
		sc.forget(st)
	}
}

// Read implements net.Conn, returning io.EOF after the peer's END_STREAM.
func (st *serverStream) Read(p []byte) (int, error) {
	sc := st.sc
	sc.mu.Lock()
	for st.recv.len() == 0 && !st.remoteEnded && st.err == nil && !st.readDL.exceeded {
		st.cond.Wait()
	}
	if st.recv.len() == 0 {
		if st.err == nil && !st.remoteEnded {
			sc.mu.Unlock()
			return 0, os.ErrDeadlineExceeded
		}
		err := st.err
		sc.mu.Unlock()
		if err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	n := st.recv.read(p)
	// Return credit to the peer's stream window once half of it is consumed.
	st.unacked += int64(n)
	var streamInc int64
	if !st.remoteEnded && st.unacked >= int64(sc.srv.opts.StreamWindow)/2 {
		streamInc = st.unacked
		st.recvWindow += streamInc
		st.unacked = 0
	}
	sc.mu.Unlock()
	if streamInc > 0 {
		_ = sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteWindowUpdate(st.id, uint32(streamInc)) })
	}
	sc.returnConnCredit(int64(n))
	return n, nil
}

// Write implements net.Conn, sending DATA frames within the flow-control
// windows granted by the peer.
func (st *serverStream) Write(p []byte) (int, error) {
	sc := st.sc
	written := 0
	for len(p) > 0 {
		sc.mu.Lock()
		for st.err == nil && !st.localEnded && !st.writeDL.exceeded && (st.sendWindow <= 0 || sc.connSendWindow <= 0) {
			st.cond.Wait()
		}
		if st.writeDL.exceeded && st.err == nil {
			sc.mu.Unlock()
			return written, os.ErrDeadlineExceeded
		}
		if st.err != nil {
			err := st.err
			sc.mu.Unlock()
			return written, err
		}
		if st.localEnded {
			sc.mu.Unlock()
			return written, errWriteClosed
		}
		n := min(int64(len(p)), st.sendWindow, sc.connSendWindow, int64(sc.peerMaxFrame))
		st.sendWindow -= n
		sc.connSendWindow -= n
		sc.mu.Unlock()
		chunk := p[:n]
		if err := sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteData(st.id, false, chunk) }); err != nil {
			return written, err
		}
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

// CloseWrite sends END_STREAM: the tunnelled FIN. Reading continues.
func (st *serverStream) CloseWrite() error {
	sc := st.sc
	sc.mu.Lock()
	if st.err != nil {
		err := st.err
		sc.mu.Unlock()
		return err
	}
	if st.localEnded {
		sc.mu.Unlock()
		return nil
	}
	st.localEnded = true
	st.cond.Broadcast()
	done := st.doneLocked()
	sc.mu.Unlock()
	err := sc.writeFrame(func(fr *http2.Framer) error { return fr.WriteData(st.id, true, nil) })
	if done {
		sc.forget(st)
	}
	return err
}

// Close ends the stream: a no-op when both directions already ended, a
// RST_STREAM(CANCEL) otherwise.
func (st *serverStream) Close() error {
	sc := st.sc
	sc.mu.Lock()
	clean := st.remoteEnded && st.localEnded && st.err == nil
	failed := st.err != nil
	sc.mu.Unlock()
	if clean {
		st.cancel()
		return nil
	}
	st.abort(net.ErrClosed, !failed)
	return nil
}

// LocalAddr and RemoteAddr are those of the carrying connection.
func (st *serverStream) LocalAddr() net.Addr  { return st.sc.conn.LocalAddr() }
func (st *serverStream) RemoteAddr() net.Addr { return st.sc.conn.RemoteAddr() }

// SetDeadline implements net.Conn.
func (st *serverStream) SetDeadline(t time.Time) error {
	_ = st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline implements net.Conn.
func (st *serverStream) SetReadDeadline(t time.Time) error {
	st.readDL.set(t, &st.sc.mu, st.cond)
	return nil
}

// SetWriteDeadline implements net.Conn.
func (st *serverStream) SetWriteDeadline(t time.Time) error {
	st.writeDL.set(t, &st.sc.mu, st.cond)
	return nil
}

// deadline is a net.Conn-style deadline that wakes waiters on cond when it
// passes. Its fields are guarded by the mutex passed to set.
type deadline struct {
	timer    *time.Timer
	gen      uint64
	exceeded bool
}

func (d *deadline) set(t time.Time, mu *sync.Mutex, cond *sync.Cond) {
	mu.Lock()
	defer mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	d.gen++
	d.exceeded = false
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		d.exceeded = true
		cond.Broadcast()
		return
	}
	gen := d.gen
	d.timer = time.AfterFunc(wait, func() {
		mu.Lock()
		defer mu.Unlock()
		if d.gen == gen {
			d.exceeded = true
			cond.Broadcast()
		}
	})
}
