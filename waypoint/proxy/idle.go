package proxy

import (
	"context"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// activityConn records when bytes last moved through a connection.
type activityConn struct {
	net.Conn
	last *atomic.Int64 // unix nanoseconds
}

func (c *activityConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c *activityConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.last.Store(time.Now().UnixNano())
	}
	return n, err
}

// CloseWrite keeps half-close working through the wrapper.
func (c *activityConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// closeWhenIdle wraps both ends of a proxied connection and closes them
// once no byte has moved either way for idle (tcp_proxy idle_timeout). The
// returned function stops the watch.
func closeWhenIdle(idle time.Duration, a, b *net.Conn) (stop func()) {
	last := &atomic.Int64{}
	last.Store(time.Now().UnixNano())
	ca, cb := *a, *b
	*a, *b = &activityConn{Conn: ca, last: last}, &activityConn{Conn: cb, last: last}
	done := make(chan struct{})
	go func() {
		t := time.NewTimer(idle)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				quiet := time.Since(time.Unix(0, last.Load()))
				if quiet >= idle {
					_ = ca.Close()
					_ = cb.Close()
					return
				}
				t.Reset(idle - quiet)
			}
		}
	}()
	return func() { close(done) }
}

// watchIdle cancels the returned context once last (unix nanoseconds,
// updated by the request's body reads and response writes) is older than
// idle: the stream idle timeout. fired says whether it did. A timer, not a
// goroutine, per request: it re-arms itself for the remaining quiet time.
func watchIdle(ctx context.Context, idle time.Duration, last *atomic.Int64) (context.Context, *atomic.Bool, func()) {
	ctx, cancel := context.WithCancel(ctx)
	fired := &atomic.Bool{}
	var mu sync.Mutex // orders the timer's creation before its first check
	var t *time.Timer
	check := func() {
		if ctx.Err() != nil {
			return
		}
		quiet := time.Since(time.Unix(0, last.Load()))
		if quiet >= idle {
			fired.Store(true)
			cancel()
			return
		}
		mu.Lock()
		t.Reset(idle - quiet)
		mu.Unlock()
	}
	mu.Lock()
	t = time.AfterFunc(idle, check)
	mu.Unlock()
	return ctx, fired, func() {
		cancel() // first: a check running now sees it and does not re-arm
		mu.Lock()
		t.Stop()
		mu.Unlock()
	}
}
