#!/usr/bin/env bash
# Builds the OCI images devcluster runs and imports them into every running
# node's containerd.
#   images.sh base     build (once, cached) pause, CoreDNS, echo-basic,
#                      echo-advanced, the toolbox and the fortio image
#   images.sh ambit    build ztunnel, waypoint, istiod-lite from the work
#                      tree into ambit/<name>:$AMBIT_IMAGE_TAG (every time)
#   images.sh import [NAME...]
#                      import every built image (or only the archives
#                      NAME.tar, e.g. fortio) into the running nodes
#   images.sh all      base + ambit + import
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root

PAYLOAD=$CACHE_DIR/payload/
MKIMAGE=$PAYLOAD/mkimage
[[ -x $MKIMAGE ]] || die "image payloads not built: run devcluster/scripts/build.sh first"
BASE_KEY=$(basename "$(readlink -f "$CACHE_DIR/payload/..")")-$({ cat "$0"; echo "$FORTIO_BIN"; } | sha256sum | cut -c1-8)
BASE_DIR=$IMAGES_DIR/base-$BASE_KEY
AMBIT_DIR=$IMAGES_DIR/ambit

build_base() {
	[[ -f $BASE_DIR/.done ]] && return 0
	[[ -x $FORTIO_BIN/fortio && -x /usr/bin/iperf3 ]] || die "fortio ($FORTIO_BIN) or iperf3 missing: run devcluster/scripts/build.sh first"
	log "building base images into $BASE_DIR"
	rm -rf "$BASE_DIR" && mkdir -p "$BASE_DIR"
	local tmp
	tmp=$(mktemp -d)
	trap 'rm -rf "$tmp"' RETURN

	"$MKIMAGE" -o "$BASE_DIR/pause.tar" -t "$PAUSE_IMAGE" -f "$PAYLOAD/pause=/pause" -entrypoint /pause >/dev/null

	"$MKIMAGE" -o "$BASE_DIR/coredns.tar" -t "$COREDNS_IMAGE" -f "$PAYLOAD/coredns=/coredns" -entrypoint /coredns >/dev/null

	local tags=()
	for t in $ECHO_BASIC_IMAGES; do tags+=(-t "$t"); done
	"$MKIMAGE" -o "$BASE_DIR/echo-basic.tar" "${tags[@]}" -f "$PAYLOAD/echo-basic=/echo-basic" -entrypoint /echo-basic >/dev/null

	# Istio's echo image layout: server is the entrypoint, client is on
	# PATH, and a self-signed /cert.crt + /cert.key back its --tls ports.
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 -subj /CN=echo \
		-addext "subjectAltName=DNS:echo,DNS:*.svc.cluster.local" -keyout "$tmp/cert.key" -out "$tmp/cert.crt" 2>/dev/null
	"$MKIMAGE" -o "$BASE_DIR/echo-advanced.tar" -t "$ECHO_ADVANCED_IMAGE" \
		-f "$PAYLOAD/server=/usr/local/bin/server" -f "$PAYLOAD/client=/usr/local/bin/client" \
		-f "$tmp/cert.crt=/cert.crt:644" -f "$tmp/cert.key=/cert.key:644" -entrypoint /usr/local/bin/server >/dev/null

	# toolbox: busybox (sh, wget, nslookup, ...) plus Debian's curl and the
	# shared libraries it links, for tests that need a shell and curl.
	local args=(-f /bin/busybox=/bin/busybox -f /usr/bin/curl=/usr/bin/curl)
	for cmd in $(/bin/busybox --list); do
		[[ $cmd == busybox ]] || args+=(-l "/bin/$cmd=busybox")
	done
	local lib
	for lib in $(ldd /usr/bin/curl | grep -o '/[^ ]*' | sort -u); do
		args+=(-f "$(readlink -f "$lib")=$lib")
	done
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$tmp/passwd"
	args+=(-f "$tmp/passwd=/etc/passwd:644")
	"$MKIMAGE" -o "$BASE_DIR/toolbox.tar" -t "$TOOLBOX_IMAGE" "${args[@]}" -entrypoint /bin/sh >/dev/null

	# fortio (server and load client, the entrypoint) and Debian's iperf3
	# with the shared libraries it links, for make bench-mesh. iperf3 needs
	# a writable /tmp (the benchmark's pods mount an emptyDir there).
	args=(-f "$FORTIO_BIN/fortio=/usr/bin/fortio" -f /usr/bin/iperf3=/usr/bin/iperf3)
	for lib in $(ldd /usr/bin/iperf3 | grep -o '/[^ ]*' | sort -u); do
		args+=(-f "$(readlink -f "$lib")=$lib")
	done
	"$MKIMAGE" -o "$BASE_DIR/fortio.tar" -t "$FORTIO_IMAGE" "${args[@]}" -entrypoint /usr/bin/fortio -cmd server >/dev/null
	touch "$BASE_DIR/.done"
}

build_ambit() {
	log "building ambit component images (ambit/<name>:$AMBIT_IMAGE_TAG) from $REPO_DIR"
	mkdir -p "$AMBIT_DIR/bin"
	(cd "$REPO_DIR" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$AMBIT_DIR/bin/" ./ztunnel ./waypoint ./istiod-lite ./ztunnel/cni/cmd/ambit-cni)
	for c in ztunnel waypoint istiod-lite; do
		local extra=()
		# ztunnel installs the CNI plugin on its node from its own image.
		[[ $c == ztunnel ]] && extra=(-f "$AMBIT_DIR/bin/ambit-cni=/usr/local/bin/ambit-cni")
		"$MKIMAGE" -o "$AMBIT_DIR/$c.tar" -t "ambit/$c:$AMBIT_IMAGE_TAG" -f "$AMBIT_DIR/bin/$c=/usr/local/bin/$c" "${extra[@]}" -entrypoint "/usr/local/bin/$c" >/dev/null
	done
}

import_all() {
	local n t name tars=()
	[[ -d $BASE_DIR ]] && tars+=("$BASE_DIR"/*.tar)
	[[ -d $AMBIT_DIR ]] && tars+=("$AMBIT_DIR"/*.tar)
	if (($#)); then
		local all=("${tars[@]}")
		tars=()
		for name in "$@"; do
			for t in "${all[@]}"; do [[ $(basename "$t" .tar) == "$name" ]] && tars+=("$t"); done
		done
		((${#tars[@]} == $#)) || die "not every one of '$*' is a built image archive (have: ${all[*]##*/})"
	fi
	((${#tars[@]})) || die "no images built yet"
	for ((n = 1; n <= NODES; n++)); do
		local sock=$RUN_DIR/n$n/containerd.sock
		[[ -S $sock ]] || die "node $n's containerd is not running ($sock missing): run 'make devcluster-up' first"
		for t in "${tars[@]}"; do
			"$CONTAINERD_BIN/ctr" -a "$sock" -n k8s.io images import --local --label io.cri-containerd.pinned=pinned "$t" 2>&1 >/dev/null | { grep -v DEPRECATION >&2 || true; } ||
				die "importing $t into node $n failed"
		done
	done
	log "imported ${#tars[@]} image archives into $NODES node(s)"
}

case ${1:-all} in
base) build_base ;;
ambit) build_ambit ;;
import) shift && import_all "$@" ;;
all) build_base && build_ambit && import_all ;;
*) die "usage: images.sh base|ambit|import [NAME...]|all" ;;
esac
