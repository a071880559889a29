// Package controlplane dials istiod-lite's gRPC port (xDS and CA) the way
// ztunnel and the waypoint both do: TLS verified against the mesh roots,
// the ServiceAccount token sent with every RPC.
package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
)

// Dial returns a client connection to addr (host:port). serverName is the
// TLS name to verify, default the host of addr; tokenFile is re-read for
// every RPC, since the kubelet rotates projected tokens.
func Dial(addr, serverName string, roots []*x509.Certificate, tokenFile string) (*grpc.ClientConn, error) {
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	if serverName == "" {
		serverName = addr
		if host, _, err := net.SplitHostPort(addr); err == nil {
			serverName = host
		}
	}
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12})),
		grpc.WithPerRPCCredentials(tokenCreds(tokenFile)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
	if err != nil {
		return nil, fmt.Errorf("control plane connection: %w", err)
	}
	return cc, nil
}

// tokenCreds sends the token file's current content with every RPC.
type tokenCreds string

func (f tokenCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + strings.TrimSpace(string(b))}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }
