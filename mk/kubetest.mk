# kube-bins: etcd, kube-apiserver and kube-controller-manager for
# pkg/kubetest (tests against a real control plane). Included by the
# top-level Makefile; `make unit-test` depends on it.
#
# The binaries live where devcluster caches them, keyed by the versions in
# devcluster/scripts/lib.sh (computed by sourcing it, so a version bump there
# moves this too). devcluster/scripts/build.sh builds all seven Kubernetes
# binaries and needs root, so this builds just the three from the same tools
# module (devcluster/tools/k8s) with the same flags. When the cache directory
# is not writable (no root), they go to .cache/kube-bins instead.
# AMBIT_KUBE_BIN_DIR overrides both; the tests read the same variable.

KUBE_BINS := etcd kube-apiserver kube-controller-manager
KUBE_CACHE_BIN := $(shell bash -c 'source $(CURDIR)/devcluster/scripts/lib.sh >/dev/null 2>&1 && echo "$$K8S_BIN"')
KUBE_VERSION := $(shell bash -c 'source $(CURDIR)/devcluster/scripts/lib.sh >/dev/null 2>&1 && echo "$$K8S_VERSION"')
KUBE_BIN_DIR := $(or $(AMBIT_KUBE_BIN_DIR),$(shell d='$(KUBE_CACHE_BIN)'; \
  if [ -z "$$d" ]; then echo '$(CURDIR)/.cache/kube-bins'; \
  elif ok=1; for b in $(KUBE_BINS); do [ -x "$$d/$$b" ] || ok=0; done; [ $$ok = 1 ]; then echo "$$d"; \
  elif p="$$d"; while [ ! -e "$$p" ]; do p=$$(dirname "$$p"); done; [ -w "$$p" ]; then echo "$$d"; \
  else echo '$(CURDIR)/.cache/kube-bins'; fi))

.PHONY: kube-bins

## kube-bins: build etcd, kube-apiserver, kube-controller-manager for the
## kubetest harness when absent (~5 min cold on 2 cores; a no-op when cached)
kube-bins:
	@missing=; for b in $(KUBE_BINS); do [ -x "$(KUBE_BIN_DIR)/$$b" ] || missing="$$missing $$b"; done; \
	if [ -z "$$missing" ]; then echo "kube-bins: cached in $(KUBE_BIN_DIR)"; exit 0; fi; \
	[ -n "$(KUBE_VERSION)" ] || { echo "kube-bins: cannot read versions from devcluster/scripts/lib.sh"; exit 1; }; \
	echo "kube-bins: building$$missing ($(KUBE_VERSION)) into $(KUBE_BIN_DIR) (cold: ~5 min on 2 cores)"; \
	tmp="$(KUBE_BIN_DIR).kubetest-tmp.$$$$"; trap 'rm -rf "$$tmp"' EXIT; mkdir -p "$$tmp" || exit 1; \
	V=k8s.io/component-base/version; C=k8s.io/client-go/pkg/version; \
	minor=$(KUBE_VERSION); minor=$${minor#v1.}; minor=$${minor%%.*}; \
	ldflags="-s -w -X $$V.gitVersion=$(KUBE_VERSION) -X $$V.gitMajor=1 -X $$V.gitMinor=$$minor -X $$V.gitTreeState=clean -X $$V.buildDate=1970-01-01T00:00:00Z -X $$C.gitVersion=$(KUBE_VERSION) -X $$C.gitMajor=1 -X $$C.gitMinor=$$minor"; \
	(cd $(CURDIR)/devcluster/tools/k8s && CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$$ldflags" -o "$$tmp/" \
	  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager go.etcd.io/etcd/server/v3) || exit 1; \
	mv "$$tmp/server" "$$tmp/etcd" && mkdir -p "$(KUBE_BIN_DIR)" && \
	for b in $(KUBE_BINS); do mv -f "$$tmp/$$b" "$(KUBE_BIN_DIR)/$$b" || exit 1; done; \
	echo "kube-bins: built into $(KUBE_BIN_DIR)"

# The kubetest harness finds the binaries through this variable.
unit-test: export AMBIT_KUBE_BIN_DIR := $(KUBE_BIN_DIR)
