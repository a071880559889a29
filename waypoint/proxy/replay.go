package proxy

import (
	"errors"
	"io"
	"sync"
)

// errReplayUnavailable is returned to a reader that needs body bytes the
// recorder no longer holds (the body outgrew the limit) or will never get
// (the request ended before the body was read).
var errReplayUnavailable = errors.New("request body is not available for replay")

// replay records a request body as it is read, up to limit bytes, so a
// retry can send it again and mirrors can send a copy. Drivers (the main
// attempts) read the source when they reach the end of what is recorded;
// followers (mirrors) only read what drivers recorded, so a slow or failing
// mirror never holds up or changes the main request.
type replay struct {
	src   io.Reader
	limit int

	readMu sync.Mutex // serialises reads of src

	mu       sync.Mutex
	cond     *sync.Cond
	buf      []byte
	total    int
	overflow bool
	done     bool  // src ended (EOF or error) or the request finished
	err      error // io.EOF or the source's error
}

func newReplay(src io.Reader, limit int) *replay {
	r := &replay{src: src, limit: limit}
	r.cond = sync.NewCond(&r.mu)
	return r
}

// replayable reports whether a new reader could replay the whole body.
func (r *replay) replayable() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return !r.overflow
}

// finish wakes followers waiting for bytes that will never come.
func (r *replay) finish() {
	r.mu.Lock()
	if !r.done {
		r.done, r.err = true, errReplayUnavailable
	}
	r.cond.Broadcast()
	r.mu.Unlock()
}

func (r *replay) reader(follower bool) io.ReadCloser {
	return &replayReader{r: r, follower: follower}
}

type replayReader struct {
	r        *replay
	pos      int
	follower bool
}

func (rr *replayReader) Close() error { return nil }

func (rr *replayReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	r := rr.r
	r.mu.Lock()
	for {
		if rr.pos < r.total {
			if r.overflow {
				r.mu.Unlock()
				return 0, errReplayUnavailable
			}
			n := copy(p, r.buf[rr.pos:])
			rr.pos += n
			r.mu.Unlock()
			return n, nil
		}
		if r.done {
			err := r.err
			r.mu.Unlock()
			return 0, err
		}
		if rr.follower {
			r.cond.Wait()
			continue
		}
		r.mu.Unlock()
		r.readMu.Lock()
		r.mu.Lock()
		if rr.pos < r.total || r.done {
			// Another reader moved the source on meanwhile.
			r.readMu.Unlock()
			continue
		}
		r.mu.Unlock()
		n, err := r.src.Read(p)
		r.mu.Lock()
		if n > 0 {
			if !r.overflow && len(r.buf)+n <= r.limit {
				r.buf = append(r.buf, p[:n]...)
			} else {
				r.overflow, r.buf = true, nil
			}
			r.total += n
			rr.pos += n
		}
		if err != nil {
			r.done, r.err = true, err
		}
		r.cond.Broadcast()
		r.mu.Unlock()
		r.readMu.Unlock()
		return n, err
	}
}
