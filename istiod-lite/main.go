// Command istiod-lite is ambit's control plane: Kubernetes watches, xDS, and the mesh CA.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/ambit-mesh/ambit/istiod-lite/ca/certmanager"
	"github.com/ambit-mesh/ambit/istiod-lite/server"
	"github.com/ambit-mesh/ambit/pkg/daemon"
	"github.com/ambit-mesh/ambit/pkg/kubeclient"
)

var flags struct {
	kubeconfig     string
	namespace      string
	trustDomain    string
	domainSuffix   string
	clusterID      string
	nodeAgentSA    string
	audiences      string
	grpcAddr       string
	monitoringAddr string
	leaderElect    bool
	debounce       time.Duration
	cmIssuer       string
	cmNamespace    string
	cmTimeout      time.Duration
	waypointImage  string
}

func main() {
	os.Exit(daemon.Main("istiod-lite", os.Args[1:], registerFlags, run))
}

func registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&flags.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.StringVar(&flags.namespace, "namespace", envOr("POD_NAMESPACE", "istio-system"), "namespace istiod-lite runs in (root Secret, leader lease, ztunnel's ServiceAccount)")
	fs.StringVar(&flags.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain of workload identities")
	fs.StringVar(&flags.domainSuffix, "domain-suffix", "cluster.local", "cluster DNS domain of Service hostnames")
	fs.StringVar(&flags.clusterID, "cluster-id", "Kubernetes", "cluster id in workload uids")
	fs.StringVar(&flags.nodeAgentSA, "ztunnel-service-account", "ztunnel", "ServiceAccount (in --namespace) of the node agents allowed node-scoped certificates and xDS")
	fs.StringVar(&flags.audiences, "token-audiences", "istio-ca", "comma-separated audiences accepted on callers' ServiceAccount tokens")
	fs.StringVar(&flags.grpcAddr, "grpc-addr", ":15012", "address of the TLS gRPC port (xDS and CA)")
	fs.StringVar(&flags.monitoringAddr, "monitoring-addr", ":15014", "address serving /metrics and /debug/ambient; empty disables")
	fs.BoolVar(&flags.leaderElect, "leader-elect", true, "write status and root ConfigMaps only while holding the leader lease")
	fs.StringVar(&flags.cmIssuer, "cert-manager-issuer", "", "have cert-manager sign workload certificates with this issuer: Issuer/<name>, ClusterIssuer/<name> or <Kind>.<group>/<name>; empty uses the built-in root")
	fs.StringVar(&flags.cmNamespace, "cert-manager-namespace", "", "namespace of the CertificateRequests (and of an Issuer); default --namespace")
	fs.DurationVar(&flags.cmTimeout, "cert-manager-timeout", 20*time.Second, "how long one certificate may take cert-manager to sign")
	fs.StringVar(&flags.waypointImage, "waypoint-image", "ambit/waypoint:dev", "image of the waypoints deployed for Gateways of class istio-waypoint")
	fs.DurationVar(&flags.debounce, "debounce", 100*time.Millisecond, "quiet period before Kubernetes changes are pushed")
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(ctx context.Context, p *daemon.Process) error {
	kube, err := kubeclient.Config(flags.kubeconfig, "istiod-lite")
	if err != nil {
		return err
	}
	klog.SetSlogLogger(p.Log) // client-go's own logs in our format
	kube.QPS, kube.Burst = 50, 100
	var cm *certmanager.Config
	if flags.cmIssuer != "" {
		cm = &certmanager.Config{Namespace: flags.cmNamespace, Timeout: flags.cmTimeout}
		if cm.Namespace == "" {
			cm.Namespace = flags.namespace
		}
		if err := certmanager.ParseIssuerRef(flags.cmIssuer, cm); err != nil {
			return fmt.Errorf("--cert-manager-issuer: %w", err)
		}
	}
	return server.Run(ctx, server.Config{
		CertManager:             cm,
		Kube:                    kube,
		Namespace:               flags.namespace,
		TrustDomain:             flags.trustDomain,
		DomainSuffix:            flags.domainSuffix,
		ClusterID:               flags.clusterID,
		NodeAgentServiceAccount: flags.nodeAgentSA,
		TokenAudiences:          daemon.SplitList(flags.audiences),
		GRPCAddr:                flags.grpcAddr,
		MonitoringAddr:          flags.monitoringAddr,
		LeaderElection:          flags.leaderElect,
		Identity:                os.Getenv("POD_NAME"),
		Debounce:                flags.debounce,
		WaypointImage:           flags.waypointImage,
		Log:                     p.Log,
		Ready:                   func() { p.SetReady(true) },
	})
}
