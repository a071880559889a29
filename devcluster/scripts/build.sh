#!/usr/bin/env bash
# Installs the Debian packages devcluster needs and builds (once, cached by
# version under $CACHE_DIR) every binary it runs.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root

APT_PKGS="runc containernetworking-plugins iptables conntrack iproute2 util-linux openssl busybox-static curl ca-certificates iperf3"
apt_install() {
	local missing=()
	for p in $APT_PKGS; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	log "installing Debian packages: ${missing[*]}"
	apt-get update -qq || die "apt-get update failed"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
}

command -v go >/dev/null || die "go is not on PATH (install Go 1.26 into /usr/local/go)"
apt_install

# cached DIR BINDIR BIN...: true when BINDIR holds every BIN.
cached() {
	local d=$1
	shift
	for b in "$@"; do [[ -x $d/$b ]] || return 1; done
}

finish() { # finish OUTDIR: publish the .tmp build atomically
	rm -rf "$1" && mv "$1.tmp" "$1"
}

if ! cached "$K8S_BIN" kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd; then
	log "building Kubernetes $K8S_VERSION and etcd $ETCD_VERSION into $K8S_BIN (cold: ~8-10 min on 2 cores)"
	V=k8s.io/component-base/version
	C=k8s.io/client-go/pkg/version
	minor=${K8S_VERSION#v1.}
	minor=${minor%%.*}
	LDFLAGS="-s -w -X $V.gitVersion=$K8S_VERSION -X $V.gitMajor=1 -X $V.gitMinor=$minor -X $V.gitTreeState=clean -X $V.buildDate=1970-01-01T00:00:00Z -X $C.gitVersion=$K8S_VERSION -X $C.gitMajor=1 -X $C.gitMinor=$minor" \
		go_build k8s "$K8S_BIN" k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy \
		k8s.io/kubernetes/cmd/kubectl go.etcd.io/etcd/server/v3
	mv "$K8S_BIN.tmp/server" "$K8S_BIN.tmp/etcd"
	finish "$K8S_BIN"
fi

if ! cached "$CONTAINERD_BIN" containerd containerd-shim-runc-v2 ctr; then
	log "building containerd $CONTAINERD_VERSION into $CONTAINERD_BIN (~2 min)"
	go_build containerd "$CONTAINERD_BIN" github.com/containerd/containerd/v2/cmd/containerd \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr
	finish "$CONTAINERD_BIN"
fi

# The image payloads: CoreDNS, echo-basic, Istio's echo server and client,
# and devcluster's own pause and mkimage.
PAYLOAD_BIN=$CACHE_DIR/payload-coredns-$COREDNS_VERSION-$(sha256sum "$DC_DIR/tools/echo-basic/go.sum" "$DC_DIR/tools/echo-advanced/go.sum" "$DC_DIR/cmd/pause/main.go" "$DC_DIR/cmd/mkimage/main.go" "$DC_DIR/go.sum" | sha256sum | cut -c1-12)/bin
if ! cached "$PAYLOAD_BIN" coredns echo-basic server client pause mkimage; then
	log "building CoreDNS, echo-basic, Istio echo, pause and mkimage into $PAYLOAD_BIN (~4 min cold)"
	go_build coredns "$PAYLOAD_BIN" github.com/coredns/coredns
	go_build echo-basic "$PAYLOAD_BIN" sigs.k8s.io/gateway-api/conformance/echo-basic
	go_build echo-advanced "$PAYLOAD_BIN" istio.io/istio/pkg/test/echo/cmd/server istio.io/istio/pkg/test/echo/cmd/client
	(cd "$DC_DIR" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$PAYLOAD_BIN.tmp/" ./cmd/pause ./cmd/mkimage)
	finish "$PAYLOAD_BIN"
fi
ln -sfn "$PAYLOAD_BIN" "$CACHE_DIR/payload"

# fortio (load generator and server) for the ztunnel data-path benchmark
# (make bench-mesh); the image also carries Debian's iperf3 (APT_PKGS).
[[ -n $FORTIO_VERSION ]] || die "cannot read the fortio version from $DC_DIR/tools/fortio/go.mod"
if ! cached "$FORTIO_BIN" fortio; then
	log "building fortio $FORTIO_VERSION into $FORTIO_BIN (~30 s cold)"
	go_build fortio "$FORTIO_BIN" fortio.org/fortio
	finish "$FORTIO_BIN"
fi
log "binaries ready: $K8S_BIN $CONTAINERD_BIN $PAYLOAD_BIN $FORTIO_BIN"
