# Shared settings and helpers for the devcluster scripts. Sourced, not run.
# Everything here can be overridden from the environment.

DC_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO_DIR="$(cd "$DC_DIR/.." && pwd)"

# Pinned versions (they key the build cache).
K8S_VERSION=v1.36.3
ETCD_VERSION=v3.6.8
CONTAINERD_VERSION=v2.2.9
COREDNS_VERSION=v1.14.7
PAUSE_IMAGE=registry.k8s.io/pause:3.10.1
COREDNS_IMAGE=registry.k8s.io/coredns/coredns:$COREDNS_VERSION
ECHO_BASIC_IMAGES="registry.k8s.io/gateway-api/conformance/echo-basic:v0.1.0 registry.k8s.io/gateway-api/conformance/echo-basic:v0.2.0 registry.k8s.io/gateway-api/conformance/echo-basic:latest"
ECHO_ADVANCED_IMAGE=registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0
TOOLBOX_IMAGE=ambit/toolbox:dev
FORTIO_IMAGE=ambit/fortio:dev  # fortio + iperf3, for make bench-mesh
AMBIT_IMAGE_TAG=${AMBIT_IMAGE_TAG:-dev}

CACHE_DIR=${DEVCLUSTER_CACHE:-/var/cache/ambit-devcluster}
STATE_DIR=${DEVCLUSTER_STATE:-/var/lib/ambit-devcluster}
RUN_DIR=${DEVCLUSTER_RUN:-/run/ambit-devcluster}
LOG_DIR=${DEVCLUSTER_LOGS:-/var/log/ambit-devcluster}
KUBECONFIG_OUT=${DEVCLUSTER_KUBECONFIG:-$STATE_DIR/kubeconfig}

# Number of nodes (1..9). Node 1 also runs the control plane.
NODES=${DEVCLUSTER_NODES:-2}

# Addressing. NET_PREFIX/24 is the node network (a bridge in its own
# namespace); the root namespace gets NET_PREFIX.1 through one veth.
NET_PREFIX=${DEVCLUSTER_NET_PREFIX:-10.89.0}
POD_CIDR=10.244.0.0/16
SERVICE_CIDR=10.96.0.0/16
API_SERVICE_IP=10.96.0.1
DNS_SERVICE_IP=10.96.0.10
CLUSTER_DOMAIN=cluster.local

NS_PREFIX=ambit-dc         # netns names: ambit-dc-sw, ambit-dc-n1, ...
HOST_VETH=ambit-dc0        # the one link in the root namespace
HOST_IP=$NET_PREFIX.1

node_name() { echo "ambit-n$1"; }
node_ns() { echo "$NS_PREFIX-n$1"; }
node_ip() { echo "$NET_PREFIX.$((10 + $1))"; }
node_pod_cidr() { echo "10.244.$1.0/24"; }
API_IP=$(node_ip 1)
API_URL=https://$API_IP:6443

K8S_BIN=$CACHE_DIR/k8s-$K8S_VERSION-etcd-$ETCD_VERSION/bin
CONTAINERD_BIN=$CACHE_DIR/containerd-$CONTAINERD_VERSION/bin
IMAGES_DIR=$CACHE_DIR/images
TOOLS_BIN=$CACHE_DIR/tools/bin
# fortio, keyed by its pinned version and the tools module's go.sum.
FORTIO_VERSION=$(awk '$1 == "require" && $2 == "fortio.org/fortio" { print $3 }' "$DC_DIR/tools/fortio/go.mod" 2>/dev/null || true)
FORTIO_BIN=$CACHE_DIR/fortio-${FORTIO_VERSION:-unknown}-$( (sha256sum "$DC_DIR/tools/fortio/go.sum" 2>/dev/null || true) | cut -c1-12)/bin

log() { printf '[devcluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[devcluster] ERROR: %s\n' "$*" >&2; exit 1; }

need_root() {
	[[ $(id -u) == 0 ]] || die "must run as root (network namespaces, mounts and cgroups need it): try 'sudo make devcluster-up'"
}

# in_node N cmd...: run cmd in node N's network namespace (mount namespace
# stays shared, so kubelet's and containerd's mounts see each other).
in_node() {
	local n=$1
	shift
	nsenter --net="/run/netns/$(node_ns "$n")" -- "$@"
}

# go_build DIR OUTDIR PKGS...: build Go packages of the tools module DIR.
go_build() {
	local dir=$1 out=$2
	shift 2
	mkdir -p "$out.tmp"
	(cd "$DC_DIR/tools/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "${LDFLAGS:--s -w}" -o "$out.tmp/" "$@")
}
