#!/usr/bin/env bash
# Brings up the devcluster: builds what is missing, creates the network
# namespaces, starts etcd, the control plane and NODES kubelets (each with
# its own containerd and kube-proxy in its own network namespace), deploys
# CoreDNS and waits until every node is Ready and cluster DNS answers.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root
T0=$(date +%s)

for c in ip nsenter setsid; do
	command -v "$c" >/dev/null || die "'$c' not found: apt-get install iproute2 util-linux"
done
[[ -d /sys/fs/cgroup/memory ]] || die "cgroup v1 memory hierarchy not mounted at /sys/fs/cgroup/memory (devcluster expects the machine's cgroup v1 mounts)"
[[ $NODES =~ ^[1-9]$ ]] || die "DEVCLUSTER_NODES must be 1..9, got '$NODES'"

KUBECTL=$K8S_BIN/kubectl
# Fixed in kubelet (pluginapi.KubeletSocket), shared by every node's kubelet.
DEVICE_PLUGIN_SOCKET=/var/lib/kubelet/device-plugins/kubelet.sock
kc() { "$KUBECTL" --kubeconfig "$STATE_DIR/pki/admin.kubeconfig" "$@"; }

# Already up? Then this is a no-op.
if [[ -f $STATE_DIR/up.done && -x $KUBECTL ]] && kc get --raw /readyz >/dev/null 2>&1 &&
	[[ $(kc get nodes --no-headers 2>/dev/null | grep -cw Ready) == "$NODES" ]]; then
	log "devcluster already up ($NODES node(s) Ready)"
	echo "export KUBECONFIG=$KUBECONFIG_OUT"
	exit 0
fi
# Anything half-made (a crash, an interrupted up) is removed first.
if [[ -e $STATE_DIR || -e $RUN_DIR ]] || ip netns list 2>/dev/null | grep -q "^$NS_PREFIX-"; then
	log "cleaning up a previous, incomplete devcluster"
	"$DC_DIR/scripts/down.sh"
fi

# Prerequisites that the user must fix.
ip netns add "$NS_PREFIX-probe" 2>/dev/null || die "cannot create network namespaces ('ip netns add' failed): devcluster needs a kernel with CONFIG_NET_NS and root"
ip netns del "$NS_PREFIX-probe"
if ip -o addr show | grep -v " $HOST_VETH " | grep -q " inet $NET_PREFIX\."; then
	die "$NET_PREFIX.0/24 is already used on this machine; choose another node network with DEVCLUSTER_NET_PREFIX=10.x.y"
fi
for cidr in $POD_CIDR $SERVICE_CIDR; do
	if ip route show "$cidr" | grep -vq unreachable; then
		die "a route for $cidr already exists in the root namespace ($(ip route show "$cidr")); devcluster uses it for pods/Services"
	fi
done

"$DC_DIR/scripts/build.sh"
"$DC_DIR/scripts/images.sh" base
# The ambit component images come from the work tree, which may not build
# at every moment: a failure here is a warning, not a failed bring-up.
"$DC_DIR/scripts/images.sh" ambit || log "warning: building the ambit images failed; the cluster comes up without them ('make devcluster-images' retries)"
"$DC_DIR/scripts/pki.sh"
PKI=$STATE_DIR/pki
mkdir -p "$STATE_DIR" "$RUN_DIR/pids" "$LOG_DIR"
rm -f "$LOG_DIR"/*.log
log "logs: $LOG_DIR"

# ---------------------------------------------------------------- network
# ambit-dc-sw holds the node bridge; each node namespace has one veth on it;
# the root namespace has one veth (ambit-dc0, $HOST_IP) so kubectl reaches
# the API server. No namespace has a default route: nothing can leave.
log "creating network namespaces"
SW=$NS_PREFIX-sw
ip netns add "$SW"
ip -n "$SW" link set lo up
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip link add "$HOST_VETH" type veth peer name host netns "$SW"
ip -n "$SW" link set host master br0 up
ip addr add "$HOST_IP/24" dev "$HOST_VETH"
ip link set "$HOST_VETH" up
# Root namespace has a default route: make pod and Service addresses fail
# fast there instead of following it off the machine.
ip route replace unreachable "$POD_CIDR"
ip route replace unreachable "$SERVICE_CIDR"
for ((n = 1; n <= NODES; n++)); do
	ns=$(node_ns "$n")
	ip netns add "$ns"
	ip link add "n$n" netns "$SW" type veth peer name eth0 netns "$ns"
	ip -n "$SW" link set "n$n" master br0 up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "$(node_ip "$n")/24" dev eth0
	ip -n "$ns" link set eth0 up
	# Service VIPs: a route so locally originated connections reach
	# kube-proxy's DNAT (nothing answers there otherwise).
	ip -n "$ns" route add "$SERVICE_CIDR" dev eth0
	for ((m = 1; m <= NODES; m++)); do
		((m == n)) || ip -n "$ns" route add "$(node_pod_cidr "$m")" via "$(node_ip "$m")"
	done
	in_node "$n" sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 \
		net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
done

# ---------------------------------------------------------------- processes
# start NAME NODE CMD...: run CMD in NODE's network namespace, detached,
# logging to $LOG_DIR/NAME.log; the pid goes to $RUN_DIR/pids/NAME.
start() {
	local name=$1 n=$2
	shift 2
	nohup nsenter --net="/run/netns/$(node_ns "$n")" -- setsid "$@" >"$LOG_DIR/$name.log" 2>&1 </dev/null &
	echo $! >"$RUN_DIR/pids/$name"
}
# wait_for WHAT SECONDS CMD...: poll CMD until it succeeds.
wait_for() {
	local what=$1 secs=$2
	shift 2
	local end=$(($(date +%s) + secs))
	until "$@" >/dev/null 2>&1; do
		(($(date +%s) < end)) || die "timed out after ${secs}s waiting for $what (logs: $LOG_DIR)"
		sleep 0.5
	done
}

log "starting etcd and the control plane on $(node_name 1) ($API_IP)"
start etcd 1 "$K8S_BIN/etcd" --name devcluster --data-dir "$STATE_DIR/etcd" \
	--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
	--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
	--initial-cluster devcluster=http://127.0.0.1:2380 --unsafe-no-fsync --log-level warn
wait_for etcd 60 in_node 1 curl -sf http://127.0.0.1:2379/health

start kube-apiserver 1 "$K8S_BIN/kube-apiserver" \
	--etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --secure-port=6443 \
	--advertise-address="$API_IP" --service-cluster-ip-range="$SERVICE_CIDR" \
	--client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
	--kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
	--kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
	--service-account-issuer=https://kubernetes.default.svc.$CLUSTER_DOMAIN \
	--service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
	--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction --allow-privileged=true \
	--profiling=false --v=1
wait_for kube-apiserver 180 kc get --raw /readyz

start kube-controller-manager 1 "$K8S_BIN/kube-controller-manager" \
	--kubeconfig="$PKI/controller-manager.kubeconfig" \
	--authentication-kubeconfig="$PKI/controller-manager.kubeconfig" --authorization-kubeconfig="$PKI/controller-manager.kubeconfig" \
	--service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" --use-service-account-credentials=true \
	--cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
	--controllers='*,bootstrapsigner,tokencleaner' --leader-elect=false --bind-address=127.0.0.1 \
	--allocate-node-cidrs=false --profiling=false --v=1
start kube-scheduler 1 "$K8S_BIN/kube-scheduler" \
	--kubeconfig="$PKI/scheduler.kubeconfig" \
	--authentication-kubeconfig="$PKI/scheduler.kubeconfig" --authorization-kubeconfig="$PKI/scheduler.kubeconfig" \
	--leader-elect=false --bind-address=127.0.0.1 --profiling=false --v=1

# ---------------------------------------------------------------- nodes
# kubelet sets a few kernel tunables when protectKernelDefaults is false;
# remember the machine's values so down.sh can put them back.
if [[ ! -f $CACHE_DIR/sysctl.orig ]]; then
	sysctl vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
		kernel.keys.root_maxkeys kernel.keys.root_maxbytes 2>/dev/null | sed 's/ = /=/' >"$CACHE_DIR/sysctl.orig" || true
fi
printf '# devcluster: no upstream DNS (nothing may leave the machine)\n' >"$STATE_DIR/resolv.conf"

for ((n = 1; n <= NODES; n++)); do
	name=$(node_name "$n")
	ip=$(node_ip "$n")
	nd=$STATE_DIR/n$n
	rd=$RUN_DIR/n$n
	mkdir -p "$nd/cni" "$nd/pod-logs" "$rd" "$STATE_DIR/nodes"
	# nodes/<node name> -> nN: how a DaemonSet pod, which knows only its
	# node's name, finds that node's directory (manifests/devcluster).
	ln -sfn "../n$n" "$STATE_DIR/nodes/$name"
	log "starting node $name ($ip): containerd, kubelet, kube-proxy"

	# Pod cgroups live under /ambit-nN in every cgroup v1 hierarchy, so
	# the kubelets never see (or clean up) each other's pods.
	for h in /sys/fs/cgroup/*/; do
		[[ $(stat -f -c %T "$h") == cgroupfs ]] || continue
		[[ $h == */unified/ ]] && continue
		mkdir -p "$h$name"
		if [[ -f ${h}cpuset.cpus ]]; then
			cat "${h}cpuset.cpus" >"$h$name/cpuset.cpus"
			cat "${h}cpuset.mems" >"$h$name/cpuset.mems"
		fi
	done

	cat >"$nd/cni/10-ambit.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "devcluster",
  "plugins": [
    {
      "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$nd/cni-ipam",
        "ranges": [[{"subnet": "$(node_pod_cidr "$n")"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
	cat >"$nd/containerd.toml" <<TOML
version = 3
root = "$nd/containerd"
state = "$rd/containerd"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "$rd/containerd.sock"

[ttrpc]
  address = "$rd/containerd.sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$PAUSE_IMAGE"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # These machines withhold CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj below containerd's (kubelet asks -998 for sandboxes).
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$rd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$nd/cni"
TOML
	start "containerd-n$n" "$n" env PATH="$CONTAINERD_BIN:$PATH" "$CONTAINERD_BIN/containerd" --config "$nd/containerd.toml"
	wait_for "containerd on $name" 60 "$CONTAINERD_BIN/ctr" -a "$rd/containerd.sock" version
done
"$DC_DIR/scripts/images.sh" import

for ((n = 1; n <= NODES; n++)); do
	name=$(node_name "$n")
	ip=$(node_ip "$n")
	nd=$STATE_DIR/n$n
	rd=$RUN_DIR/n$n
	cat >"$nd/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$name
address: $ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-n$n-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-n$n-serving.key
clusterDomain: $CLUSTER_DOMAIN
clusterDNS: [$DNS_SERVICE_IP]
resolvConf: $STATE_DIR/resolv.conf
containerRuntimeEndpoint: unix://$rd/containerd.sock
podLogsDir: $nd/pod-logs
failSwapOn: false
protectKernelDefaults: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%, nodefs.inodesFree: 1%}
serializeImagePulls: false
YAML
	# The device plugin socket is not under --root-dir: every kubelet empties
	# /var/lib/kubelet/device-plugins and binds kubelet.sock there, and two
	# kubelets doing so at once make one fail ("address already in use").
	# So the kubelets start one at a time: the next waits for this one's socket.
	rm -f "$DEVICE_PLUGIN_SOCKET"
	start "kubelet-n$n" "$n" "$K8S_BIN/kubelet" --config="$nd/kubelet.yaml" \
		--kubeconfig="$PKI/kubelet-n$n.kubeconfig" --root-dir="$nd/kubelet" \
		--hostname-override="$name" --node-ip="$ip" --v=1
	wait_for "kubelet on $name to bind $DEVICE_PLUGIN_SOCKET" 60 test -S "$DEVICE_PLUGIN_SOCKET"

	cat >"$nd/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $PKI/kube-proxy.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $name
bindAddress: $ip
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
	start "kube-proxy-n$n" "$n" "$K8S_BIN/kube-proxy" --config="$nd/kube-proxy.yaml" --v=1
done

log "waiting for $NODES node(s) to be Ready"
wait_for "nodes Ready" 180 bash -c "[[ \$('$KUBECTL' --kubeconfig '$PKI/admin.kubeconfig' get nodes --no-headers 2>/dev/null | grep -cw Ready) == $NODES ]]"

log "deploying CoreDNS"
sed -e "s|@COREDNS_IMAGE@|$COREDNS_IMAGE|; s|@DNS_SERVICE_IP@|$DNS_SERVICE_IP|; s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|" \
	"$DC_DIR/manifests/coredns.yaml" | kc apply -f - >/dev/null
wait_for "CoreDNS rollout" 180 kc -n kube-system rollout status deploy/coredns --timeout=5s
wait_for "cluster DNS (kubernetes.default via $DNS_SERVICE_IP from every node)" 60 bash -c "
	for ((n = 1; n <= $NODES; n++)); do
		nsenter --net=/run/netns/$NS_PREFIX-n\$n -- busybox nslookup kubernetes.default.svc.$CLUSTER_DOMAIN $DNS_SERVICE_IP | grep -q 'Address: $API_SERVICE_IP' || exit 1
	done"

install -m 600 "$PKI/admin.kubeconfig" "$KUBECONFIG_OUT"
touch "$STATE_DIR/up.done"
log "devcluster up: $NODES node(s) Ready, CoreDNS answering, in $(($(date +%s) - T0))s"
log "logs: $LOG_DIR   kubectl: $KUBECTL"
echo "export KUBECONFIG=$KUBECONFIG_OUT"
