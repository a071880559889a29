#!/usr/bin/env bash
# make demo: ambit on devcluster, start to finish. Brings the cluster up (or
# reuses it), installs ambit from manifests/, deploys a client and two echo
# Services, puts their namespace in the mesh, shows the traffic is mutual
# TLS with both identities, blocks a request with a DENY policy, removes it;
# then adds a waypoint (ambit waypoint deploy), splits traffic with an
# HTTPRoute and denies one path with an L7 policy.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
S=$REPO/devcluster/scripts
NS=ambit-demo

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }

say "Bringing up devcluster (a 2-node Kubernetes on this machine; the first run builds it, ~10 min)"
"$S/up.sh"
eval "$("$S/env.sh")"
export KUBECONFIG
k() { "$KUBECTL" "$@"; }

say "Building ambit's images from this checkout and loading them into the nodes"
"$S/images.sh" ambit
"$S/images.sh" import

say "Installing ambit: kubectl apply -k manifests/devcluster (istiod-lite + ztunnel)"
k apply -k manifests/devcluster >/dev/null
k -n istio-system rollout restart deployment/istiod-lite daemonset/ztunnel >/dev/null
k -n istio-system rollout status deployment/istiod-lite --timeout=180s >/dev/null
k -n istio-system rollout status daemonset/ztunnel --timeout=180s >/dev/null
k -n istio-system get pods -o wide

say "Deploying the sample: a client and Services echo-a, echo-b in namespace $NS (not in the mesh yet)"
if k get namespace "$NS" >/dev/null 2>&1; then
	k delete namespace "$NS" --wait=true --timeout=120s >/dev/null
fi
k apply -k manifests/samples/demo >/dev/null
for d in client echo-a echo-b; do k -n "$NS" rollout status "deployment/$d" --timeout=180s >/dev/null; done
k -n "$NS" get pods -o wide

request() { # request <service>[/path]: prints the answering pod, or why it failed
	local out
	if out=$(k -n "$NS" exec deploy/client -- curl -s -m 5 -w '\n%{http_code}' "http://$1" 2>/dev/null); then
		local code=${out##*$'\n'}
		if [[ $code != 200 ]]; then
			echo "HTTP $code: ${out%$'\n'*}"
			return
		fi
		sed -n 's/.*"pod": *"\([^"]*\)".*/answered by \1/p' <<<"$out" | head -1
	else
		echo "FAILED (connection refused or reset)"
	fi
}

# mesh_traffic prints, from every ztunnel's metrics, the connections into
# $NS as the destination's ztunnel saw them: peer identities and security.
mesh_traffic() {
	local p
	for p in $(k -n istio-system get pods -l app.kubernetes.io/name=ztunnel -o name); do
		k get --raw "/api/v1/namespaces/istio-system/${p/\//s/}:15020/proxy/metrics"
	done | grep '^istio_tcp_connections_opened_total{' | grep 'reporter="destination"' |
		grep "destination_workload_namespace=\"$NS\"" | grep -v 'source_principal="unknown"' |
		sed -E 's/.*connection_security_policy="([^"]*)".*destination_principal="([^"]*)".*source_principal="([^"]*)"[^}]*\} ([0-9]+)/\3 -> \2 \1 \4/' |
		awk '{n[$1" "$2" "$3" "$4]+=$5} END {for (k in n) {split(k, f, " "); printf "%s -> %s: %s, %d connection(s)\n", f[1], f[3], f[4], n[k]}}' | sort
}

say "Before the mesh: the client reaches echo-a directly, in plaintext"
note "$(request echo-a)"

say "Putting $NS in the mesh: kubectl label namespace $NS istio.io/dataplane-mode=ambient"
k label namespace "$NS" istio.io/dataplane-mode=ambient --overwrite >/dev/null
note "ztunnel enrolls the running pods inside their own network namespaces (no restart, no sidecar)"
for _ in $(seq 1 60); do
	request echo-a >/dev/null
	[[ -n $(mesh_traffic) ]] && break
	sleep 1
done

say "Traffic now: the same requests, carried by ztunnel over HBONE (HTTP/2 CONNECT in mutual TLS)"
for _ in 1 2 3; do note "echo-a: $(request echo-a)"; note "echo-b: $(request echo-b)"; done
say "What the receiving ztunnels saw (istio_tcp_connections_opened_total; peer identities are SPIFFE IDs):"
mesh_traffic | while read -r line; do note "$line"; done

say "Applying an L4 AuthorizationPolicy: DENY the client's identity to echo-b"
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client-to-echo-b}
spec:
  selector: {matchLabels: {app: echo-b}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/$NS/sa/client"]}
YAML
sleep 2
note "echo-b: $(request echo-b)"
note "echo-a: $(request echo-a)   (not covered by the policy)"
note "policy status: $(k -n "$NS" get authorizationpolicy deny-client-to-echo-b -o jsonpath='{.status.conditions[0].type}={.status.conditions[0].status} ({.status.conditions[0].reason})')"

say "Removing the policy"
k -n "$NS" delete authorizationpolicy deny-client-to-echo-b >/dev/null
sleep 2
note "echo-b: $(request echo-b)"

say "Adding a waypoint for L7: ambit waypoint deploy -n $NS --enroll-namespace --wait"
(cd "$REPO" && CGO_ENABLED=0 go build -o bin/ambit ./cli)
"$REPO/bin/ambit" waypoint deploy -n "$NS" --enroll-namespace --wait --timeout 3m | while read -r line; do note "$line"; done
"$REPO/bin/ambit" waypoint list -n "$NS" | while read -r line; do note "$line"; done

say "An HTTPRoute on echo-a (GAMMA: parentRef is the Service): /v2 goes to echo-b, the rest stays"
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-a}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-a, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: echo-b, port: 80}]
  - backendRefs: [{name: echo-a, port: 80}]
YAML
for _ in $(seq 1 30); do
	[[ $(request echo-a/v2) == *echo-b* ]] && break
	sleep 1
done
note "echo-a/    : $(request echo-a/)"
note "echo-a/v2  : $(request echo-a/v2)   (routed by the waypoint)"
note "route status: $(k -n "$NS" get httproute echo-a -o jsonpath='{range .status.parents[0].conditions[*]}{.type}={.status} {end}')"

say "An L7 AuthorizationPolicy on the waypoint: DENY /admin (targetRefs: the waypoint Gateway)"
k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules:
  - to:
    - operation: {paths: ["/admin", "/admin/*"]}
YAML
for _ in $(seq 1 30); do
	[[ $(request echo-a/admin) == *403* ]] && break
	sleep 1
done
note "echo-a/admin: $(request echo-a/admin)"
note "echo-a/     : $(request echo-a/)"
note "policy status: $(k -n "$NS" get authorizationpolicy deny-admin -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {end}')"

say "Explore further"
note "export KUBECONFIG=$KUBECONFIG; alias kubectl=$KUBECTL"
note "kubectl -n $NS exec deploy/client -- curl -s http://echo-a/         # a request through the mesh"
note "kubectl -n istio-system logs ds/ztunnel                              # enrollment, certificates, denials"
note "kubectl get --raw /api/v1/namespaces/istio-system/services/istiod:15014/proxy/debug/ambient   # istiod-lite's view"
note "kubectl -n $NS get authorizationpolicy,peerauthentication          # try your own policies"
note "kubectl -n $NS get gateway,httproute                               # the waypoint and its routes"
note "kubectl -n $NS logs deploy/waypoint                                # the waypoint's access log"
say "Tear down: make devcluster-down"
