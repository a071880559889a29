# ambit build and test entry points. Every tool is built from pinned Go
# modules into ./bin, so a fresh machine needs only Go.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
COMPONENTS := ztunnel waypoint istiod-lite
# Nested Go modules (own go.mod) tested beside the main one.
SUBMODULES := pkg/hbone/interop devcluster conformance devcluster/cmd/l7bench
STATICCHECK := $(BIN)/staticcheck

.PHONY: tidy all build test lint fmt-check vet unit-test bench fuzz demo clean help generate generate-check protoc

all: build

help:
	@echo "make build      build ztunnel, waypoint, istiod-lite and the ambit CLI into ./bin"
	@echo "make test       gofmt check, go vet, staticcheck, and every test with -race"
	@echo "make bench      run the benchmarks (HBONE vs plain TCP) and print ratios"
	@echo "make fuzz       run each fuzz target for FUZZTIME (default 30s)"
	@echo "make demo       run the demo"
	@echo "make conformance  Gateway API conformance (mesh profiles, ambient) on devcluster"
	@echo "make clean      remove build output"

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./ztunnel ./waypoint ./istiod-lite
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ambit ./cli

# The conformance suite runs after e2e (not beside it under -j: both use the
# devcluster); its report goes to bin/ so that a test run leaves the
# committed reports (make conformance) alone.
test: fmt-check vet lint unit-test e2e
	$(MAKE) --no-print-directory conformance CONFORMANCE_REPORT_DIR=$(BIN)/conformance

# Every Go file in the tree, excluding build output and fetched caches.
GOFILES = $(shell find . -name '*.go' -not -path './bin/*' -not -path './.cache/*' -not -path '*/testdata/*')

# tidy: the nested modules replace the main one, so they need a tidy whenever
# the main go.mod changes; `make test` does not tidy (it must not hide drift).
tidy:
	$(GO) mod tidy
	@for m in $(SUBMODULES); do (cd $$m && $(GO) mod tidy) || exit 1; done

fmt-check:
	@out="$$(gofmt -l $(GOFILES))"; if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	@echo "gofmt: ok"

vet:
	$(GO) vet ./...
	@for m in $(SUBMODULES); do (cd $$m && $(GO) vet ./...) || exit 1; done

$(STATICCHECK): tools/go.mod tools/go.sum
	@mkdir -p $(BIN)
	cd tools && $(GO) build -o $(STATICCHECK) honnef.co/go/tools/cmd/staticcheck

lint: $(STATICCHECK)
	$(STATICCHECK) ./...
	@for m in $(SUBMODULES); do (cd $$m && $(STATICCHECK) ./...) || exit 1; done

# Protobuf code generation (apis/). protoc comes from the distribution
# (Debian: protobuf-compiler, 3.21.x); protoc-gen-go is built from the
# google.golang.org/protobuf version pinned in tools/go.mod, which must equal
# the one in the main go.mod (generated code needs runtime >= generator).
PROTOC_GEN_GO := $(BIN)/protoc-gen-go
PROTO_FILES = $(sort $(wildcard apis/*/*/*.proto))
PROTOC_FLAGS = -I . --plugin=protoc-gen-go=$(PROTOC_GEN_GO) --go_opt=paths=source_relative
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(PROTOC_GEN_GO): tools/go.mod tools/go.sum
	@mkdir -p $(BIN)
	cd tools && $(GO) build -o $(PROTOC_GEN_GO) google.golang.org/protobuf/cmd/protoc-gen-go

# protoc: install Debian's protobuf-compiler when protoc is not on PATH.
protoc:
	@command -v protoc >/dev/null 2>&1 || { \
	  echo "protoc not found: installing protobuf-compiler with apt-get"; \
	  $(SUDO) apt-get install -y protobuf-compiler || { $(SUDO) apt-get update && $(SUDO) apt-get install -y protobuf-compiler; }; \
	}
	@protoc --version

generate: protoc $(PROTOC_GEN_GO)
	protoc $(PROTOC_FLAGS) --go_out=. $(PROTO_FILES)

# Regenerate into a temporary directory and diff against the committed files.
# Lines naming the protoc version are ignored, so another protoc release does
# not fail the check by itself. Does not install protoc: fails if it is absent.
generate-check: $(PROTOC_GEN_GO)
	@command -v protoc >/dev/null 2>&1 || { echo "generate-check: FAIL: protoc not found on PATH; run 'make protoc' (or apt-get install -y protobuf-compiler) first"; exit 1; }
	@tmp="$$(mktemp -d)"; trap 'rm -rf "$$tmp"' EXIT; \
	protoc $(PROTOC_FLAGS) --go_out="$$tmp" $(PROTO_FILES) || exit 1; \
	want="$$(cd "$$tmp" && find apis -name '*.pb.go' | sort)"; have="$$(find apis -name '*.pb.go' | sort)"; \
	if [ "$$want" != "$$have" ]; then echo "generate-check: FAIL: generated file set differs; run make generate"; diff <(echo "$$have") <(echo "$$want"); exit 1; fi; \
	for f in $$want; do \
	  diff -u -I '^//[[:space:]]*protoc[[:space:]]' "$$f" "$$tmp/$$f" || { echo "generate-check: FAIL: $$f is stale; run make generate"; exit 1; }; \
	done; \
	echo "generate-check: ok"

unit-test: kube-bins
	$(GO) test -race -count=1 -timeout 8m ./...
	@for m in $(SUBMODULES); do (cd $$m && $(GO) test -race -count=1 -timeout 8m ./...) || exit 1; done

BENCHTIME ?= 2s
# Packages with benchmarks (figures in docs/performance.md and docs/waypoint.md).
BENCH_PKGS := ./pkg/hbone/ ./istiod-lite/ambient/ ./ztunnel/authz/ ./ztunnel/state/ ./ztunnel/capture/ ./waypoint/router/

bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem $(BENCH_PKGS)

FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/identity/
	$(GO) test -run '^$$' -fuzz '^FuzzParseAuthority$$' -fuzztime $(FUZZTIME) ./pkg/hbone/
	$(GO) test -run '^$$' -fuzz '^FuzzEvaluate$$' -fuzztime $(FUZZTIME) ./ztunnel/authz/
	$(GO) test -run '^$$' -fuzz '^FuzzCompileRoute$$' -fuzztime $(FUZZTIME) ./waypoint/router/

demo:
	devcluster/scripts/demo.sh

clean:
	rm -rf $(BIN)

# devcluster targets (devcluster-up, devcluster-down, e2e) live beside their code.
-include devcluster/devcluster.mk
# Fragments of other areas (kube-bins for the kubetest harness, ...).
-include mk/*.mk
