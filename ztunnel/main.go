// Command ztunnel is ambit's node-level proxy: it captures traffic of enrolled pods and carries it over HBONE mTLS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"k8s.io/klog/v2"

	"github.com/ambit-mesh/ambit/pkg/daemon"
	"github.com/ambit-mesh/ambit/pkg/kubeclient"
	"github.com/ambit-mesh/ambit/pkg/metrics"
	"github.com/ambit-mesh/ambit/ztunnel/agent"
	"github.com/ambit-mesh/ambit/ztunnel/cni/install"
)

var flags struct {
	kubeconfig     string
	nodeName       string
	nodeIP         string
	controlPlane   string
	rootCert       string
	token          string
	trustDomain    string
	network        string
	cniSocket      string
	cniStateFile   string
	cniBinDir      string
	cniConfDir     string
	cniPlugin      string
	cniExclude     string
	hostRoot       string
	monitoringAddr string
	adminAddr      string
	certTTL        time.Duration
}

func main() {
	os.Exit(daemon.Main("ztunnel", os.Args[1:], registerFlags, run))
}

func registerFlags(fs *flag.FlagSet) {
	fs.StringVar(&flags.kubeconfig, "kubeconfig", "", "kubeconfig file; empty uses the in-cluster configuration")
	fs.StringVar(&flags.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
	fs.StringVar(&flags.nodeIP, "node-ip", os.Getenv("HOST_IP"), "this node's address (default $HOST_IP, status.hostIP): where kubelet probes to captured pods are source-NATed to bypass capture; empty disables")
	fs.StringVar(&flags.controlPlane, "control-plane", "istiod.istio-system.svc:15012", "istiod-lite's gRPC address (xDS and CA)")
	fs.StringVar(&flags.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "mesh root certificate(s), PEM (ConfigMap istio-ca-root-cert)")
	fs.StringVar(&flags.token, "token", "/var/run/secrets/tokens/istio-token", "ServiceAccount token for audience istio-ca (projected, pod-bound)")
	fs.StringVar(&flags.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&flags.network, "network", "", "network of this node's workloads")
	fs.StringVar(&flags.cniSocket, "cni-socket", "/var/run/ambit/ztunnel.sock", "Unix socket the CNI plugin sends pod events to")
	fs.StringVar(&flags.cniStateFile, "cni-state-file", "/var/run/ambit/ambient-namespaces.json", "where the ambient namespaces are written for the CNI plugin")
	fs.StringVar(&flags.cniBinDir, "cni-bin-dir", "", "host CNI bin directory (as mounted) to install the plugin into; empty: do not install")
	fs.StringVar(&flags.cniConfDir, "cni-conf-dir", "", "host CNI conf directory (as mounted) whose primary configuration gets the plugin chained")
	fs.StringVar(&flags.cniPlugin, "cni-plugin", "/usr/local/bin/ambit-cni", "the plugin binary to install")
	fs.StringVar(&flags.cniExclude, "cni-exclude-namespaces", "kube-system,istio-system", "comma-separated namespaces the plugin never sends to ztunnel")
	fs.StringVar(&flags.hostRoot, "host-root", "/proc/1/root", "the node's root file system as seen from ztunnel (needs hostPID), for pod netns paths not mounted into its container; empty disables")
	fs.StringVar(&flags.monitoringAddr, "monitoring-addr", ":15020", "address serving /metrics; empty disables")
	fs.StringVar(&flags.adminAddr, "admin-addr", "127.0.0.1:15000", "address of the JSON admin view (/config_dump: workloads, services, policies, certificates, enrolled pods); empty disables")
	fs.DurationVar(&flags.certTTL, "cert-ttl", 24*time.Hour, "requested lifetime of workload certificates")
}

func run(ctx context.Context, p *daemon.Process) error {
	kube, err := kubeclient.Config(flags.kubeconfig, "ztunnel")
	if err != nil {
		return err
	}
	klog.SetSlogLogger(p.Log)
	prov, err := metrics.New()
	if err != nil {
		return err
	}
	if flags.monitoringAddr != "" {
		ln, err := net.Listen("tcp", flags.monitoringAddr)
		if err != nil {
			return fmt.Errorf("monitoring listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", prov.Handler())
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				p.Log.Error("monitoring server", "error", err)
			}
		}()
		defer hs.Close()
	}
	var nodeIP netip.Addr
	if flags.nodeIP != "" {
		if nodeIP, err = netip.ParseAddr(flags.nodeIP); err != nil {
			return fmt.Errorf("--node-ip: %w", err)
		}
	}
	var cni *install.Config
	if flags.cniBinDir != "" || flags.cniConfDir != "" {
		cni = &install.Config{PluginBinary: flags.cniPlugin, BinDir: flags.cniBinDir, ConfDir: flags.cniConfDir,
			Entry: install.Entry{ExcludeNamespaces: daemon.SplitList(flags.cniExclude)}}
	}
	return agent.Run(ctx, agent.Config{
		AdminAddr: flags.adminAddr, DrainTimeout: p.ShutdownTimeout() * 2 / 3,
		CNIStateFile: flags.cniStateFile, CNIInstall: cni, HostRoot: flags.hostRoot,
		Kube: kube, NodeName: flags.nodeName, NodeIP: nodeIP, ControlPlane: flags.controlPlane,
		RootCertFile: flags.rootCert, TokenFile: flags.token, TrustDomain: flags.trustDomain,
		Network: flags.network, CNISocket: flags.cniSocket, CertTTL: flags.certTTL,
		Metrics: prov, Log: p.Log, Ready: func() { p.SetReady(true) },
	})
}
