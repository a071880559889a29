#!/usr/bin/env bash
# Writes the cluster CA, component certificates, the ServiceAccount signing
# key and kubeconfigs into $STATE_DIR/pki (skipped when already there).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

PKI=$STATE_DIR/pki
if [[ ! -f $PKI/.done ]]; then
	rm -rf "$PKI"
fi
mkdir -p "$PKI" && chmod 700 "$PKI"
cd "$PKI"

if [[ ! -f .done ]]; then
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
	-subj "/CN=ambit-devcluster-ca" -keyout ca.key -out ca.crt 2>/dev/null

# cert NAME SUBJECT [SANS] [USAGE]
cert() {
	local name=$1 subj=$2 sans=${3:-} usage=${4:-clientAuth}
	openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$subj" \
		-keyout "$name.key" -out "$name.csr" 2>/dev/null
	{
		echo "basicConstraints=CA:FALSE"
		echo "keyUsage=critical,digitalSignature,keyEncipherment"
		echo "extendedKeyUsage=$usage"
		if [[ -n $sans ]]; then echo "subjectAltName=$sans"; fi
	} >"$name.ext"
	openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
		-extfile "$name.ext" -out "$name.crt" 2>/dev/null
	rm -f "$name.csr" "$name.ext"
}

cert apiserver "/CN=kube-apiserver" \
	"DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,IP:$API_SERVICE_IP,IP:$API_IP,IP:127.0.0.1" serverAuth
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
cert admin "/O=system:masters/CN=kubernetes-admin"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
cert kube-proxy "/CN=system:kube-proxy"
fi
for ((n = 1; n <= NODES; n++)); do
	[[ -f kubelet-n$n-serving.crt ]] && continue
	cert "kubelet-n$n" "/O=system:nodes/CN=system:node:$(node_name "$n")"
	cert "kubelet-n$n-serving" "/CN=$(node_name "$n")" "DNS:$(node_name "$n"),IP:$(node_ip "$n")" serverAuth
done
[[ -f sa.key ]] || openssl genrsa -out sa.key 2048 2>/dev/null
[[ -f sa.pub ]] || openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null

# kubeconfig NAME CERTNAME
kubeconfig() {
	cat >"$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: ambit-devcluster
  cluster:
    server: $API_URL
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "$2.crt")
    client-key-data: $(base64 -w0 "$2.key")
contexts:
- name: ambit-devcluster
  context: {cluster: ambit-devcluster, user: $2}
current-context: ambit-devcluster
KC
}
[[ -f admin.kubeconfig ]] || kubeconfig admin admin
[[ -f controller-manager.kubeconfig ]] || kubeconfig controller-manager controller-manager
[[ -f scheduler.kubeconfig ]] || kubeconfig scheduler scheduler
[[ -f kube-proxy.kubeconfig ]] || kubeconfig kube-proxy kube-proxy
for ((n = 1; n <= NODES; n++)); do [[ -f kubelet-n$n.kubeconfig ]] || kubeconfig "kubelet-n$n" "kubelet-n$n"; done
touch .done
