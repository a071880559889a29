#!/usr/bin/env bash
# Stops every devcluster process and removes everything up.sh made:
# processes (by pid file, by cgroup and by network namespace), mounts,
# cgroups, network namespaces, the root namespace veth and routes, runtime
# state, and the kernel tunables kubelet changed. Safe to run any time,
# also after a crash or when nothing is up. Logs in $LOG_DIR are kept.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root

our_netns() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^$NS_PREFIX-" || true; }

# pids of every process whose network namespace is one of ours, or that
# sits in one of our node cgroups.
our_pids() {
	local inodes="" ns
	for ns in $(our_netns); do
		inodes+=" net:[$(stat -L -c %i "/run/netns/$ns")]"
	done
	local p
	for p in /proc/[0-9]*; do
		local id=${p#/proc/}
		[[ $id == "$$" || $id == "$BASHPID" ]] && continue
		if [[ -n $inodes ]]; then
			local l
			l=$(readlink "$p/ns/net" 2>/dev/null) || continue
			[[ " $inodes " == *" $l "* ]] && { echo "$id"; continue; }
		fi
	done
	local f
	for f in /sys/fs/cgroup/*/ambit-n[0-9]; do
		[[ -d $f ]] && find "$f" -name cgroup.procs -exec cat {} + 2>/dev/null
	done
	return 0
}

stop_pidfiles() { # kubelets first so they do not restart what we stop
	local pat f pid
	for pat in 'kubelet-*' 'kube-proxy-*' 'kube-scheduler' 'kube-controller-manager' 'kube-apiserver' 'etcd'; do
		for f in "$RUN_DIR"/pids/$pat; do
			[[ -f $f ]] || continue
			pid=$(cat "$f")
			# only if that pid still runs one of our binaries
			if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "$CACHE_DIR/"; then
				kill -TERM "$pid" 2>/dev/null || true
			fi
		done
	done
	sleep 1
}

if [[ -d $RUN_DIR/pids ]]; then
	stop_pidfiles
fi
for i in 1 2 3 4 5 6 7 8 9 10; do
	pids=$(our_pids | sort -u | grep -v "^$$\$" || true)
	[[ -z $pids ]] && break
	# shellcheck disable=SC2086
	kill -KILL $pids 2>/dev/null || true
	sleep 0.5
done
[[ -z ${pids:-} ]] || log "warning: processes still alive: $pids"

# Mounts (kubelet volumes, containerd snapshots and shm, pod netns pins).
for root in "$STATE_DIR" "$RUN_DIR"; do
	while read -r m; do
		umount -l "$m" 2>/dev/null || true
	done < <(awk -v r="$root" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
done

# Pod cgroups.
for f in /sys/fs/cgroup/*/ambit-n[0-9]; do
	[[ -d $f ]] && find "$f" -depth -type d -exec rmdir {} \; 2>/dev/null
done
left=$(ls -d /sys/fs/cgroup/*/ambit-n[0-9] 2>/dev/null || true)
[[ -z $left ]] || log "warning: cgroups left: $left"

# Network: namespaces, the root veth, the unreachable routes.
for ns in $(our_netns); do ip netns del "$ns"; done
ip link del "$HOST_VETH" 2>/dev/null || true
for cidr in $POD_CIDR $SERVICE_CIDR; do
	if ip route show "$cidr" | grep -q '^unreachable'; then ip route del unreachable "$cidr"; fi
done

# Kernel tunables kubelet changed.
if [[ -f $CACHE_DIR/sysctl.orig ]]; then
	sysctl -qw $(cat "$CACHE_DIR/sysctl.orig") >/dev/null 2>&1 || true
	rm -f "$CACHE_DIR/sysctl.orig"
fi

rm -rf "$STATE_DIR" "$RUN_DIR"
log "devcluster down (logs kept in $LOG_DIR)"
