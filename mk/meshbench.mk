# bench-mesh: the ztunnel data-path benchmark on a running devcluster with
# ambit installed (docs/performance.md, "ztunnel data path on devcluster").
# Included by the top-level Makefile; a benchmark, not part of `make test`.
# Needs root. Builds the ambit/fortio:dev image (fortio + Debian's iperf3,
# cached with the other base images) and imports only that image into the
# nodes, then runs devcluster/cmd/meshbench; MESHBENCH_FLAGS passes flags
# (e.g. MESHBENCH_FLAGS='-rounds 3 -t 60s -raw /tmp/meshbench.json').

MESHBENCH_FLAGS ?=

.PHONY: bench-mesh

## bench-mesh: ztunnel vs direct pod-to-pod on devcluster: fortio latency at
## 1,000 req/s, ztunnel CPU and RSS, iperf3 throughput; prints markdown
bench-mesh:
	$(CURDIR)/devcluster/scripts/build.sh
	$(CURDIR)/devcluster/scripts/images.sh base
	$(CURDIR)/devcluster/scripts/images.sh import fortio
	@eval "$$($(CURDIR)/devcluster/scripts/env.sh)" && cd $(CURDIR)/devcluster && \
	  $(GO) run ./cmd/meshbench -kubectl "$$KUBECTL" -kubeconfig "$$KUBECONFIG" $(MESHBENCH_FLAGS)
