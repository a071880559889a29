package interop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	istiohbone "istio.io/istio/pkg/hbone"

	"github.com/ambit-mesh/ambit/pkg/ca"
	"github.com/ambit-mesh/ambit/pkg/hbone"
	"github.com/ambit-mesh/ambit/pkg/identity"
	"github.com/ambit-mesh/ambit/pkg/internal/testnet"
	"github.com/ambit-mesh/ambit/pkg/internal/testpki"
	"github.com/ambit-mesh/ambit/pkg/mtls"
)

func randomPayload(n int) []byte {
	b := make([]byte, n)
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// exchange writes payload and reads the same number of bytes back; Istio's
// client side hands out a net.Pipe, which has no half-close.
func exchange(t *testing.T, c net.Conn, payload []byte) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		_, err := c.Write(payload)
		errc <- err
	}()
	got := make([]byte, len(payload))
	_ = c.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if sha256.Sum256(got) != sha256.Sum256(payload) {
		t.Fatal("echoed bytes differ from those sent")
	}
}

// Istio's Go HBONE client dials ambit's HBONE server.
func TestIstioClientToAmbitServer(t *testing.T) {
	p := testpki.New(t, ca.Options{TrustDomain: "cluster.local"})
	serverSrc := p.Source(t, "interop", "ambit-server")
	peers := make(chan identity.Identity, 4)
	srv := hbone.NewServer(mtls.ServerConfig(serverSrc, p.Bundle), hbone.HandlerFunc(func(ctx context.Context, req *hbone.Request) error {
		peers <- req.Peer
		target, err := (&net.Dialer{}).DialContext(ctx, "tcp", req.Target.String())
		if err != nil {
			return hbone.Errorf(http.StatusServiceUnavailable, "%v", err)
		}
		defer target.Close()
		s, err := req.Accept()
		if err != nil {
			return err
		}
		_, _, err = hbone.Proxy(s, target)
		return err
	}), hbone.ServerOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	clientSrc := p.Source(t, "interop", "istio-client")
	dialer := istiohbone.NewDialer(istiohbone.Config{
		ProxyAddress: ln.Addr().String(),
		TLS:          mtls.ClientConfig(clientSrc, p.Bundle, serverSrc.Identity()),
	})
	echo := testnet.StartEcho(t)
	for _, size := range []int{5, 1 << 20} {
		conn, err := dialer.DialContext(context.Background(), "tcp", echo.String())
		if err != nil {
			t.Fatalf("istio dialer through ambit server: %v", err)
		}
		exchange(t, conn, randomPayload(size))
		conn.Close()
		if got := <-peers; got != clientSrc.Identity() {
			t.Fatalf("ambit server saw peer %s, want %s", got, clientSrc.Identity())
		}
	}
}

// ambit's HBONE client dials Istio's Go HBONE server.
func TestAmbitClientToIstioServer(t *testing.T) {
	p := testpki.New(t, ca.Options{TrustDomain: "cluster.local"})
	serverSrc := p.Source(t, "interop", "istio-server")
	srv := istiohbone.NewServer()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// As Istio's echo app serves HBONE over TLS: a TLS listener under its server.
	go func() { _ = srv.Serve(tls.NewListener(ln, mtls.ServerConfig(serverSrc, p.Bundle))) }()
	defer srv.Close()

	client := hbone.NewClient(p.Bundle, hbone.ClientOptions{})
	defer client.Close()
	echo := testnet.StartEcho(t)
	req := hbone.DialRequest{
		Source:   p.Source(t, "interop", "ambit-client"),
		Proxy:    netip.MustParseAddrPort(ln.Addr().String()),
		Target:   echo,
		Expected: serverSrc.Identity(),
	}
	for _, size := range []int{5, 1 << 20} {
		conn, err := client.Dial(context.Background(), req)
		if err != nil {
			t.Fatalf("ambit client through istio server: %v", err)
		}
		payload := randomPayload(size)
		errc := make(chan error, 1)
		go func() {
			_, err := conn.Write(payload)
			if err == nil {
				err = conn.CloseWrite() // Istio's server forwards our END_STREAM as FIN
			}
			errc <- err
		}()
		got, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		if err := <-errc; err != nil {
			t.Fatalf("write: %v", err)
		}
		if !bytes.Equal(got, payload) {
			t.Fatalf("echo through istio server: got %d bytes, want %d identical", len(got), len(payload))
		}
		conn.Close()
	}
	if st := client.Stats(); st.Connections != 1 {
		t.Fatalf("streams to the istio server used %d pooled connections, want 1", st.Connections)
	}

	// The client also refuses Istio's server when it is not who we expect.
	wrong := req
	wrong.Expected = identity.Identity{TrustDomain: "cluster.local", Namespace: "interop", ServiceAccount: "someone-else"}
	_, err = client.Dial(context.Background(), wrong)
	var se *hbone.StatusError
	if err == nil || errors.As(err, &se) {
		t.Fatalf("dial to a server with an unexpected identity: %v, want a TLS refusal", err)
	}
}
