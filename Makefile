# Every target runs from a fresh clone with only Go installed; .ci/run adds
# the optional third-party tools (node ws, sslscan, gitleaks) the suites use.
# The patched toolchain (go1.27.3 fixes standard-library vulnerabilities that
# govulncheck finds reachable on 1.26.8). The go command fetches it from the
# module proxy on first use, so a fresh machine with Go 1.26 needs nothing else.
export GOTOOLCHAIN := go1.27.3
GO        ?= go
BIN       ?= bin/relay
ADDR      ?= 127.0.0.1:8080
FUZZTIME  ?= 30s
TARGET    ?=
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)

.PHONY: build test run vet lint fuzz attack attack-local load bench sbom vulncheck clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/relay

## test: every unit, integration, property and attack test, with the race detector.
test:
	$(GO) test -race -count=1 -timeout 20m ./...

## run: the relay in plain-HTTP local mode on 127.0.0.1:8080 (never a public address).
run: build
	@echo "relay: binaries dial ws://$(ADDR)/v1/server, phones ws://$(ADDR)/v1/client; health at http://$(ADDR)/healthz"
	$(BIN) serve --insecure-listen $(ADDR)

vet:
	$(GO) vet ./...
	$(GO) vet -tags relay_testhooks ./...

## lint: gofmt, vet, and staticcheck when installed (go install honnef.co/go/tools/cmd/staticcheck@latest).
lint: vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@if command -v staticcheck >/dev/null; then staticcheck ./...; else echo "staticcheck not installed; skipped"; fi

## fuzz: run every fuzz target for FUZZTIME each (default 30s, or a count such as 10000x,
## which keeps a run's length independent of the machine's load).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz' || true); do \
	    echo "== $$pkg $$f ($(FUZZTIME))"; \
	    $(GO) test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg; \
	  done; \
	done

## attack: the remote-safe attack suite against a deployment: make attack TARGET=https://relay.example.com
attack: build
	@if [ -z "$(TARGET)" ]; then echo "usage: make attack TARGET=https://relay.example.com"; exit 2; fi
	$(BIN) attack --target $(TARGET)

## attack-local: every scenario, including local-only ones, against freshly built binaries.
attack-local:
	$(GO) test -race -count=1 -v ./attacks

## load: admission-control figures on 127.0.0.1 (connections held at --max-conns 2000, refusals/s over
## the cap, a pair's RTT idle vs during the flood); about 10 s, loopback only. LOAD_FLAGS="--json" etc.
load: build
	$(GO) run ./attacks/cmd/relay-load --relay $(BIN) $(LOAD_FLAGS)

bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=6 ./... | tee bench.txt

## sbom: CycloneDX SBOM of the module (go install github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@v1.10.0).
sbom:
	cyclonedx-gomod mod -licenses -json -output sbom.json

## vulncheck: needs network access to vuln.go.dev, which CI machines here do not have.
vulncheck:
	$(GO) run golang.org/x/vuln/cmd/govulncheck@latest ./...

clean:
	rm -rf bin bench.txt sbom.json
