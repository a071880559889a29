# devcluster: a real Kubernetes on this machine (see docs/devcluster.md).
# Included by the top-level Makefile.

DEVCLUSTER_SCRIPTS := $(CURDIR)/devcluster/scripts
E2E_TIMEOUT ?= 30m

.PHONY: devcluster-build devcluster-up devcluster-down devcluster-images devcluster-status e2e conformance

## devcluster-build: build and cache Kubernetes, containerd and the base images
devcluster-build:
	$(DEVCLUSTER_SCRIPTS)/build.sh
	$(DEVCLUSTER_SCRIPTS)/images.sh base

## devcluster-up: bring the cluster up (no-op when it is already up)
devcluster-up:
	$(DEVCLUSTER_SCRIPTS)/up.sh

## devcluster-down: stop every devcluster process and remove its state
devcluster-down:
	$(DEVCLUSTER_SCRIPTS)/down.sh

## devcluster-images: rebuild ambit/{ztunnel,waypoint,istiod-lite}:dev from
## the work tree and import them into the running cluster's nodes
devcluster-images:
	$(DEVCLUSTER_SCRIPTS)/images.sh ambit
	$(DEVCLUSTER_SCRIPTS)/images.sh import

devcluster-status:
	@eval "$$($(DEVCLUSTER_SCRIPTS)/env.sh)"; echo "KUBECONFIG=$$KUBECONFIG"; echo "logs: $$LOG_DIR"; \
	  $$KUBECTL --kubeconfig $$KUBECONFIG get nodes -o wide

## e2e: run the devcluster e2e tests; brings the cluster up first when it is
## not, and takes it down afterwards if it brought it up (DEVCLUSTER_KEEP=1
## keeps it).
e2e:
	cd devcluster && DEVCLUSTER_START=1 go test -tags e2e -count=1 -timeout $(E2E_TIMEOUT) -v ./e2e/...

CONFORMANCE_TIMEOUT ?= 30m
## conformance: the Gateway API conformance suite (v1.6.3, profiles MESH-HTTP
## and MESH-GRPC) in ambient mode against ambit on the devcluster, installed
## as the e2e tests install it (brings the cluster up and down if needed,
## like e2e); writes conformance/reports/<version>/ambit-mesh.yaml, prints a
## pass/fail summary, fails if any test fails (docs/conformance.md).
## CONFORMANCE_RUN_TEST=<ShortName> runs one test; CONFORMANCE_KEEP=1 keeps
## the test namespaces; CONFORMANCE_REPORT_DIR writes the report elsewhere
## (make test: bin/conformance).
conformance:
	cd conformance && DEVCLUSTER_START=1 AMBIT_VERSION=$(VERSION) CONFORMANCE_REPORT_DIR=$(CONFORMANCE_REPORT_DIR) go test -tags conformance -count=1 -timeout $(CONFORMANCE_TIMEOUT) -v -run '^TestConformance$$' .
