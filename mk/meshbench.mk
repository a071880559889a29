# bench-mesh: the ztunnel data-path benchmark on a running devcluster with
# ambit installed (docs/performance.md, "ztunnel data path on devcluster").
# Included by the top-level Makefile; a benchmark, not part of `make test`.
# Needs root. Builds the ambit/fortio:dev image (fortio + Debian's iperf3,
# cached with the other base images) and imports only that image into the
# nodes, then runs devcluster/cmd/meshbench; MESHBENCH_FLAGS passes flags
# (e.g. MESHBENCH_FLAGS='-rounds 3 -t 60s -raw /tmp/meshbench.json').

MESHBENCH_FLAGS ?=

.PHONY: bench-mesh bench-waypoint

## bench-mesh: ztunnel vs direct pod-to-pod on devcluster: fortio latency at
## 1,000 req/s, ztunnel CPU and RSS, iperf3 throughput; prints markdown
bench-mesh:
	$(CURDIR)/devcluster/scripts/build.sh
	$(CURDIR)/devcluster/scripts/images.sh base
	$(CURDIR)/devcluster/scripts/images.sh import fortio
	@eval "$$($(CURDIR)/devcluster/scripts/env.sh)" && cd $(CURDIR)/devcluster && \
	  $(GO) run ./cmd/meshbench -kubectl "$$KUBECTL" -kubeconfig "$$KUBECONFIG" $(MESHBENCH_FLAGS)

## bench-waypoint: through a waypoint vs ztunnel only on devcluster (same
## run, alternating): fortio latency at 1,000 req/s, the waypoint's CPU per
## 1,000 requests and RSS (docs/performance.md, "Waypoint on devcluster").
## Brings devcluster up and installs ambit (manifests/devcluster) when they
## are not; MESHBENCH_FLAGS passes flags (e.g. -rounds 4 -raw FILE).
bench-waypoint:
	$(CURDIR)/devcluster/scripts/build.sh
	$(CURDIR)/devcluster/scripts/up.sh
	$(CURDIR)/devcluster/scripts/images.sh base
	$(CURDIR)/devcluster/scripts/images.sh import fortio
	@eval "$$($(CURDIR)/devcluster/scripts/env.sh)" && K="$$KUBECTL --kubeconfig $$KUBECONFIG" && \
	  if ! $$K -n istio-system get daemonset ztunnel >/dev/null 2>&1; then \
	    echo "bench-waypoint: installing ambit (images.sh ambit/import, kubectl apply -k manifests/devcluster)"; \
	    $(CURDIR)/devcluster/scripts/images.sh ambit && $(CURDIR)/devcluster/scripts/images.sh import || exit 1; \
	    $$K get crd gateways.gateway.networking.k8s.io >/dev/null 2>&1; crds_new=$$?; \
	    $$K apply -k $(CURDIR)/manifests/devcluster || exit 1; \
	    $$K wait --for=condition=Established --timeout=60s crd/gateways.gateway.networking.k8s.io crd/gatewayclasses.gateway.networking.k8s.io || exit 1; \
	    if [ $$crds_new != 0 ]; then $$K -n istio-system rollout status deployment/istiod-lite --timeout=180s && \
	      $$K -n istio-system rollout restart deployment/istiod-lite || exit 1; fi; \
	  fi; \
	  $$K -n istio-system rollout status deployment/istiod-lite --timeout=180s && \
	  $$K -n istio-system rollout status daemonset/ztunnel --timeout=180s && \
	  cd $(CURDIR)/devcluster && \
	  $(GO) run ./cmd/meshbench -waypoint -kubectl "$$KUBECTL" -kubeconfig "$$KUBECONFIG" $(MESHBENCH_FLAGS)
