# certmanager-bin: cert-manager's controllers and CRDs for the tests of
# istiod-lite/ca/certmanager (the cert-manager signing backend). Included by
# the top-level Makefile; `make unit-test` depends on it.
#
# The controller binary is tools/certmanager, a small launcher (its own Go
# module) that runs cert-manager's own controllers from the pinned
# github.com/cert-manager/cert-manager module: cert-manager's cmd/controller
# module is not published on the Go module proxy. The CRDs are copied from
# the same module's deploy/crds. Both go to
# /var/cache/ambit-certmanager/<version>/ (cert-manager-controller and
# crds/), or to .cache/certmanager/<version>/ when that is not writable.
# AMBIT_CERTMANAGER_BIN (the binary's path; CRDs in crds/ beside it)
# overrides both; the tests read the same variable.

CERTMANAGER_VERSION := $(shell grep -oE 'github.com/cert-manager/cert-manager v[^ ]+' $(CURDIR)/tools/certmanager/go.mod | head -1 | cut -d' ' -f2)
CERTMANAGER_BIN := $(or $(AMBIT_CERTMANAGER_BIN),$(shell d=/var/cache/ambit-certmanager/$(CERTMANAGER_VERSION); \
  if [ -x "$$d/cert-manager-controller" ]; then echo "$$d/cert-manager-controller"; \
  elif p="$$d"; while [ ! -e "$$p" ]; do p=$$(dirname "$$p"); done; [ -w "$$p" ]; then echo "$$d/cert-manager-controller"; \
  else echo '$(CURDIR)/.cache/certmanager/$(CERTMANAGER_VERSION)/cert-manager-controller'; fi))
CERTMANAGER_DIR := $(patsubst %/,%,$(dir $(CERTMANAGER_BIN)))

.PHONY: certmanager-bin

## certmanager-bin: build cert-manager's controllers and copy its CRDs for
## the cert-manager backend's tests when absent (~3 min cold on 2 cores)
certmanager-bin:
	@if [ -x "$(CERTMANAGER_BIN)" ] && ls "$(CERTMANAGER_DIR)"/crds/*.yaml >/dev/null 2>&1; then \
	  echo "certmanager-bin: cached in $(CERTMANAGER_DIR)"; exit 0; fi; \
	[ -n "$(CERTMANAGER_VERSION)" ] || { echo "certmanager-bin: cannot read the cert-manager version from tools/certmanager/go.mod"; exit 1; }; \
	echo "certmanager-bin: building cert-manager $(CERTMANAGER_VERSION) controllers into $(CERTMANAGER_DIR) (cold: ~3 min on 2 cores)"; \
	mkdir -p "$(CERTMANAGER_DIR)" || exit 1; \
	tmp="$$(mktemp -d "$(CERTMANAGER_DIR)/.tmp.XXXXXX")" || exit 1; trap 'rm -rf "$$tmp"' EXIT; \
	cd $(CURDIR)/tools/certmanager || exit 1; \
	$(GO) mod download github.com/cert-manager/cert-manager || exit 1; \
	src="$$($(GO) list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)" && [ -d "$$src/deploy/crds" ] || \
	  { echo "certmanager-bin: cert-manager module source (deploy/crds) not found"; exit 1; }; \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o "$$tmp/cert-manager-controller" . || exit 1; \
	mkdir -p "$$tmp/crds" && cp "$$src"/deploy/crds/*.yaml "$$tmp/crds/" && chmod u+w "$$tmp"/crds/*.yaml || exit 1; \
	rm -rf "$(CERTMANAGER_DIR)/crds" && mv "$$tmp/crds" "$(CERTMANAGER_DIR)/crds" && \
	mv -f "$$tmp/cert-manager-controller" "$(CERTMANAGER_BIN)" || exit 1; \
	echo "certmanager-bin: built into $(CERTMANAGER_DIR)"

# The cert-manager backend's tests find the binary (and crds/ beside it)
# through this variable.
unit-test: certmanager-bin
unit-test: export AMBIT_CERTMANAGER_BIN := $(CERTMANAGER_BIN)
