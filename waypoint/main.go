// Command waypoint is ambit's optional L7 proxy, configured by istiod-lite over Envoy xDS.
package main

import (
	"context"
	"flag"
	"os"
	"time"

	"github.com/ambit-mesh/ambit/pkg/daemon"
	"github.com/ambit-mesh/ambit/waypoint/agent"
)

var flags struct {
	namespace, name, serviceAccount string
	xdsAddress, rootCert, token     string
	trustDomain                     string
	hboneAddr, monitoringAddr       string
	adminAddr                       string
	otlpEndpoint                    string
	certTTL                         time.Duration
}

func main() {
	os.Exit(daemon.Main("waypoint", os.Args[1:], registerFlags, run))
}

func registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&flags.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the waypoint Gateway's namespace (default $POD_NAMESPACE)")
	fs.StringVar(&flags.name, "name", "", "the waypoint Gateway's name (also its ServiceAccount's)")
	fs.StringVar(&flags.serviceAccount, "service-account", "", "the ServiceAccount whose identity the waypoint uses (default --name)")
	fs.StringVar(&flags.xdsAddress, "xds-address", "istiod.istio-system.svc:15012", "istiod-lite's gRPC address (xDS and CA)")
	fs.StringVar(&flags.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "mesh root certificate(s), PEM (ConfigMap istio-ca-root-cert)")
	fs.StringVar(&flags.token, "token", "/var/run/secrets/tokens/istio-token", "ServiceAccount token for audience istio-ca (projected)")
	fs.StringVar(&flags.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&flags.hboneAddr, "hbone-addr", ":15008", "address serving HBONE")
	fs.StringVar(&flags.monitoringAddr, "monitoring-addr", ":15020", "address serving /metrics; empty disables")
	fs.StringVar(&flags.adminAddr, "admin-addr", "127.0.0.1:15000", "address of the JSON admin view (/config_dump: chains, routes, clusters with their hosts' state, certificate); empty disables")
	fs.StringVar(&flags.otlpEndpoint, "otlp-endpoint", os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "OTLP/gRPC collector for spans (host:port or http(s)://host:port); empty exports none (default $OTEL_EXPORTER_OTLP_ENDPOINT)")
	fs.DurationVar(&flags.certTTL, "cert-ttl", 24*time.Hour, "requested lifetime of the waypoint's certificate")
}

// run is the component body; it serves until ctx is cancelled.
func run(ctx context.Context, p *daemon.Process) error {
	return agent.Run(ctx, agent.Config{
		Namespace: flags.namespace, Name: flags.name, ServiceAccount: flags.serviceAccount,
		XDSAddress: flags.xdsAddress, RootCertFile: flags.rootCert, TokenFile: flags.token, TrustDomain: flags.trustDomain,
		HBONEAddr: flags.hboneAddr, MonitoringAddr: flags.monitoringAddr, AdminAddr: flags.adminAddr, OTLPEndpoint: flags.otlpEndpoint,
		CertTTL: flags.certTTL, DrainTimeout: p.ShutdownTimeout() * 2 / 3, Log: p.Log, Ready: p.SetReady,
	})
}
