package hbone

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/internal/testnet"
	"github.com/ambit-mesh/ambit/pkg/internal/testpki"
)

// Each benchmark measures HBONE beside plain TCP on loopback in the same run
// and reports both and their ratio, so figures compare across machines.

const benchBlock = 4 << 20

// ackSink reads blocks of benchBlock bytes and acknowledges each with one
// byte, so the writer measures delivered, not buffered, throughput.
func ackSink(c io.ReadWriter) {
	buf := make([]byte, BufferSize)
	for {
		for left := benchBlock; left > 0; {
			n, err := c.Read(buf[:min(len(buf), left)])
			if err != nil {
				return
			}
			left -= n
		}
		if _, err := c.Write([]byte{1}); err != nil {
			return
		}
	}
}

func sendBlock(b *testing.B, c io.ReadWriter, block []byte) {
	if _, err := c.Write(block); err != nil {
		b.Fatalf("write: %v", err)
	}
	var ack [1]byte
	if _, err := io.ReadFull(c, ack[:]); err != nil {
		b.Fatalf("ack: %v", err)
	}
}

func BenchmarkStreamThroughput(b *testing.B) {
	pki := testpki.New(b, ca.Options{})
	tcpAddr := testnet.StartTCP(b, func(c *net.TCPConn) { ackSink(c) })
	_, proxy, serverID := startServer(b, pki, HandlerFunc(func(_ context.Context, req *Request) error {
		s, err := req.Accept()
		if err != nil {
			return err
		}
		ackSink(s)
		return nil
	}))
	client := newClient(b, pki, ClientOptions{})
	tcpConn, err := net.Dial("tcp", tcpAddr.String())
	if err != nil {
		b.Fatal(err)
	}
	defer tcpConn.Close()
	stream, err := client.Dial(context.Background(), DialRequest{Source: pki.Source(b, "ns", "client-sa"), Proxy: proxy, Target: netip.MustParseAddrPort("10.0.0.1:80"), Expected: serverID})
	if err != nil {
		b.Fatal(err)
	}
	defer stream.Close()
	block := make([]byte, benchBlock)

	var tcpTime, hboneTime time.Duration
	b.SetBytes(2 * benchBlock)
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		sendBlock(b, tcpConn, block)
		t1 := time.Now()
		sendBlock(b, stream, block)
		hboneTime += time.Since(t1)
		tcpTime += t1.Sub(t0)
	}
	mb := float64(b.N) * benchBlock / (1 << 20)
	b.ReportMetric(mb/tcpTime.Seconds(), "tcp-MB/s")
	b.ReportMetric(mb/hboneTime.Seconds(), "hbone-MB/s")
	b.ReportMetric(tcpTime.Seconds()/hboneTime.Seconds(), "hbone/tcp")
}

// echoByte answers each byte read with the same byte.
func echoByte(c io.ReadWriter) {
	var b [1]byte
	for {
		if _, err := c.Read(b[:]); err != nil {
			return
		}
		if _, err := c.Write(b[:]); err != nil {
			return
		}
	}
}

func pingPong(b *testing.B, c io.ReadWriter) {
	var buf [1]byte
	if _, err := c.Write([]byte{7}); err != nil {
		b.Fatalf("write: %v", err)
	}
	if _, err := io.ReadFull(c, buf[:]); err != nil {
		b.Fatalf("read: %v", err)
	}
}

// BenchmarkStreamSetup opens a stream on a warm pooled connection and does
// one 1-byte round trip, beside a fresh loopback TCP connection doing the same.
func BenchmarkStreamSetup(b *testing.B) {
	pki := testpki.New(b, ca.Options{})
	tcpAddr := testnet.StartTCP(b, func(c *net.TCPConn) { echoByte(c) })
	_, proxy, serverID := startServer(b, pki, HandlerFunc(func(_ context.Context, req *Request) error {
		s, err := req.Accept()
		if err != nil {
			return err
		}
		echoByte(s)
		return nil
	}))
	client := newClient(b, pki, ClientOptions{})
	req := DialRequest{Source: pki.Source(b, "ns", "client-sa"), Proxy: proxy, Target: netip.MustParseAddrPort("10.0.0.1:80"), Expected: serverID}
	// Warm the pool.
	warm, err := client.Dial(context.Background(), req)
	if err != nil {
		b.Fatal(err)
	}
	pingPong(b, warm)
	defer warm.Close()

	var tcpTime, hboneTime time.Duration
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		tc, err := net.Dial("tcp", tcpAddr.String())
		if err != nil {
			b.Fatal(err)
		}
		pingPong(b, tc)
		tc.Close()
		t1 := time.Now()
		hc, err := client.Dial(context.Background(), req)
		if err != nil {
			b.Fatal(err)
		}
		pingPong(b, hc)
		hc.Close()
		hboneTime += time.Since(t1)
		tcpTime += t1.Sub(t0)
	}
	b.ReportMetric(float64(tcpTime.Nanoseconds())/float64(b.N), "tcp-ns/setup")
	b.ReportMetric(float64(hboneTime.Nanoseconds())/float64(b.N), "hbone-ns/setup")
	b.ReportMetric(hboneTime.Seconds()/tcpTime.Seconds(), "hbone/tcp-time")
}
