package hbone

import "sync"

// BufferSize is the size of pooled copy and receive buffers.
const BufferSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, BufferSize); return &b }}

func getBuf() *[]byte  { return bufPool.Get().(*[]byte) }
func putBuf(b *[]byte) { bufPool.Put(b) }

// chunkQueue is a FIFO of bytes held in pooled fixed-size chunks, so that
// buffering received DATA allocates nothing in the steady state.
type chunkQueue struct {
	chunks []*chunk
	size   int
}

type chunk struct {
	buf  *[]byte
	r, w int
}

func (q *chunkQueue) len() int { return q.size }

func (q *chunkQueue) write(p []byte) {
	q.size += len(p)
	for len(p) > 0 {
		var tail *chunk
		if n := len(q.chunks); n > 0 && q.chunks[n-1].w < BufferSize {
			tail = q.chunks[n-1]
		} else {
			tail = &chunk{buf: getBuf()}
			q.chunks = append(q.chunks, tail)
		}
		n := copy((*tail.buf)[tail.w:], p)
		tail.w += n
		p = p[n:]
	}
}

func (q *chunkQueue) read(p []byte) int {
	total := 0
	for len(p) > 0 && len(q.chunks) > 0 {
		head := q.chunks[0]
		n := copy(p, (*head.buf)[head.r:head.w])
		head.r += n
		p = p[n:]
		total += n
		if head.r == head.w {
			putBuf(head.buf)
			q.chunks[0] = nil
			q.chunks = q.chunks[1:]
		}
	}
	q.size -= total
	return total
}

// reset drops everything buffered and returns how many bytes were dropped.
func (q *chunkQueue) reset() int {
	dropped := q.size
	for _, c := range q.chunks {
		putBuf(c.buf)
	}
	q.chunks, q.size = nil, 0
	return dropped
}
