# bench-l7: the waypoint's HTTP engine against nginx and Caddy doing the
# same routing, on loopback (docs/performance.md, "Waypoint L7 engine vs
# nginx and Caddy"). Included by the top-level Makefile; a benchmark, not
# part of `make test`. Installs Debian's nginx-light and wrk with apt-get
# when missing (root or sudo), builds Caddy from the version pinned in
# devcluster/tools/caddy (cached in /var/cache/ambit-devcluster when
# writable, else bin/), then runs devcluster/cmd/l7bench (its own module).
# L7BENCH_FLAGS passes flags (e.g. L7BENCH_FLAGS='-rounds 7 -d 15s
# -profile /tmp/waypoint.pprof -raw /tmp/l7bench.json').

L7BENCH_FLAGS ?=
CADDY_VERSION := $(shell awk '$$1 == "require" && $$2 == "github.com/caddyserver/caddy/v2" { print $$3 }' $(CURDIR)/devcluster/tools/caddy/go.mod 2>/dev/null)
CADDY_DIR := $(shell d=/var/cache/ambit-devcluster/caddy-$(CADDY_VERSION)-$$(sha256sum $(CURDIR)/devcluster/tools/caddy/go.sum | cut -c1-12)/bin; \
  if [ -x "$$d/caddy" ] || { p="$$d"; while [ ! -e "$$p" ]; do p=$$(dirname "$$p"); done; [ -w "$$p" ]; }; then echo "$$d"; \
  else echo '$(BIN)/caddy-$(CADDY_VERSION)'; fi)

# fortio (the fixed-rate phase) where devcluster caches it (build.sh), else bin/.
L7_FORTIO_DIR := $(shell d=$$(bash -c 'source $(CURDIR)/devcluster/scripts/lib.sh >/dev/null 2>&1 && echo "$$FORTIO_BIN"'); \
  if [ -n "$$d" ] && { [ -x "$$d/fortio" ] || { p="$$d"; while [ ! -e "$$p" ]; do p=$$(dirname "$$p"); done; [ -w "$$p" ]; }; }; then echo "$$d"; \
  else echo '$(BIN)/fortio-l7bench'; fi)

.PHONY: bench-l7 caddy-bin l7bench-fortio l7bench-deps

## caddy-bin: build Caddy (devcluster/tools/caddy) once into CADDY_DIR
caddy-bin:
	@if [ -x "$(CADDY_DIR)/caddy" ]; then echo "caddy-bin: cached in $(CADDY_DIR)"; exit 0; fi; \
	[ -n "$(CADDY_VERSION)" ] || { echo "caddy-bin: cannot read the Caddy version from devcluster/tools/caddy/go.mod"; exit 1; }; \
	echo "caddy-bin: building Caddy $(CADDY_VERSION) into $(CADDY_DIR) (~2 min cold on 2 cores)"; \
	mkdir -p "$(CADDY_DIR)" && cd $(CURDIR)/devcluster/tools/caddy && \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o "$(CADDY_DIR)/caddy.tmp" github.com/caddyserver/caddy/v2/cmd/caddy && \
	mv -f "$(CADDY_DIR)/caddy.tmp" "$(CADDY_DIR)/caddy"

## l7bench-fortio: build fortio (devcluster/tools/fortio) once into L7_FORTIO_DIR
l7bench-fortio:
	@if [ -x "$(L7_FORTIO_DIR)/fortio" ]; then echo "l7bench-fortio: cached in $(L7_FORTIO_DIR)"; exit 0; fi; \
	echo "l7bench-fortio: building fortio into $(L7_FORTIO_DIR)"; \
	mkdir -p "$(L7_FORTIO_DIR)" && cd $(CURDIR)/devcluster/tools/fortio && \
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o "$(L7_FORTIO_DIR)/fortio.tmp" fortio.org/fortio && \
	mv -f "$(L7_FORTIO_DIR)/fortio.tmp" "$(L7_FORTIO_DIR)/fortio"

## l7bench-deps: Debian's nginx-light and wrk, installed when missing
l7bench-deps:
	@missing=; for p in nginx-light wrk; do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "l7bench-deps: installing$$missing with apt-get"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing || \
	  { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; } || exit 1; fi

## bench-l7: max req/s of the waypoint's HTTP engine vs nginx and Caddy
## (same 29-route table, loopback, wrk at saturation), then latency and CPU
## per request at a fixed 1,000 req/s (fortio); prints markdown
bench-l7: l7bench-deps caddy-bin l7bench-fortio
	cd $(CURDIR)/devcluster/cmd/l7bench && $(GO) build -o $(BIN)/l7bench .
	$(BIN)/l7bench -caddy "$(CADDY_DIR)/caddy" -nginx "$$(command -v nginx || echo /usr/sbin/nginx)" -wrk "$$(command -v wrk)" -fortio "$(L7_FORTIO_DIR)/fortio" $(L7BENCH_FLAGS)
