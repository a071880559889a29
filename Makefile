# ambit build and test entry points. Every tool is built from pinned Go
# modules into ./bin, so a fresh machine needs only Go.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
COMPONENTS := ztunnel waypoint istiod-lite
# Nested Go modules (own go.mod) tested beside the main one.
SUBMODULES := pkg/hbone/interop
STATICCHECK := $(BIN)/staticcheck

.PHONY: all build test lint fmt-check vet unit-test bench fuzz demo clean help

all: build

help:
	@echo "make build      build ztunnel, waypoint, istiod-lite and the ambit CLI into ./bin"
	@echo "make test       gofmt check, go vet, staticcheck, and every test with -race"
	@echo "make bench      run the benchmarks (HBONE vs plain TCP) and print ratios"
	@echo "make fuzz       run each fuzz target for FUZZTIME (default 30s)"
	@echo "make demo       run the demo"
	@echo "make clean      remove build output"

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ ./ztunnel ./waypoint ./istiod-lite
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/ambit ./cli

test: fmt-check vet lint unit-test

# Every Go file in the tree, excluding build output and fetched caches.
GOFILES = $(shell find . -name '*.go' -not -path './bin/*' -not -path './.cache/*' -not -path '*/testdata/*')

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

unit-test:
	$(GO) test -race -count=1 -timeout 8m ./...
	@for m in $(SUBMODULES); do (cd $$m && $(GO) test -race -count=1 -timeout 8m ./...) || exit 1; done

BENCHTIME ?= 2s
bench:
	$(GO) test -run '^$$' -bench . -benchtime $(BENCHTIME) -benchmem ./pkg/hbone/

FUZZTIME ?= 30s
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/identity/
	$(GO) test -run '^$$' -fuzz '^FuzzParseAuthority$$' -fuzztime $(FUZZTIME) ./pkg/hbone/

demo:
	@echo "make demo: not yet. The demo lands with the ztunnel issue (devcluster + ambit + sample app)."

clean:
	rm -rf $(BIN)

# devcluster targets (devcluster-up, devcluster-down, e2e) live beside their code.
-include devcluster/devcluster.mk
