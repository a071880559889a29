#!/usr/bin/env bash
# Prints the devcluster's paths as shell assignments (read by devkube):
#   eval "$(devcluster/scripts/env.sh)"; $KUBECTL get nodes
set -euo pipefail
source "$(dirname "$0")/lib.sh"
echo "KUBECONFIG=$KUBECONFIG_OUT"
echo "KUBECTL=$K8S_BIN/kubectl"
echo "CTR=$CONTAINERD_BIN/ctr"
echo "LOG_DIR=$LOG_DIR"
echo "NODES=$NODES"
