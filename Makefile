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
# Build identity (relay version, /healthz, relay_build_info). Stamped from git
# here because CI builds with -buildvcs=false; outside a checkout both stay
# empty and the binary reports what the go command recorded instead.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null)
REVISION  ?= $(shell r=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$r || echo $$r+dirty; })
BUILDINFO := github.com/pyrycode/relay/internal/buildinfo
LDFLAGS   := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).revision=$(REVISION)
# The vulnerability gate's pins (see vulncheck below). VULNDB_VERSION is a
# golang.org/x/vulndb pseudo-version: its date is how new the records are.
VULNDB_VERSION ?= v0.0.0-20261105234957-e22db6528018
GOVULNCHECK_VERSION ?= v1.9.0
VULNDB_DIR     ?= $(CURDIR)/bin/vulndb-$(VULNDB_VERSION)
# Pinned tools are installed into bin/tools by the targets that need them.
TOOLS          := $(CURDIR)/bin/tools
GOVULNCHECK    := $(TOOLS)/govulncheck-$(GOVULNCHECK_VERSION)/govulncheck
CYCLONEDX_VERSION ?= v1.10.0
CYCLONEDX      := $(TOOLS)/cyclonedx-gomod-$(CYCLONEDX_VERSION)/cyclonedx-gomod
SBOM_VERSION   := $(or $(VERSION),devel)
# The Debian package (make deb): nfpm pinned like the tools above. Its
# version is the git tag without the "v" (1.2.0, 1.2.0+3+gabc1234 after
# it), else 0.0.0+git.<revision>; every file's mtime is the commit's time,
# so two builds of one commit are byte-identical.
NFPM_VERSION   ?= v2.48.0
NFPM           := $(TOOLS)/nfpm-$(NFPM_VERSION)/nfpm
DEB_ARCH       ?= $(shell $(GO) env GOARCH)
DEB_VERSION    ?= $(shell echo '$(SBOM_VERSION)' | sed -e 's/^v\([0-9]\)/\1/;t' -e 's/^/0.0.0+git./' | tr -- '-_' '++')
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
DEB            := bin/relay_$(DEB_VERSION)_$(DEB_ARCH).deb
DEB_ENV        := RELAY_DEB_VERSION='$(DEB_VERSION)' RELAY_DEB_ARCH='$(DEB_ARCH)' RELAY_DEB_BINARY='$(BIN)' SOURCE_DATE_EPOCH='$(SOURCE_DATE_EPOCH)'

.PHONY: build test run cluster cluster-figures chaos chaos-mutants cluster-scale vet lint fuzz attack attack-local load bench perf pgo pgo-check sbom vulncheck vulndb units image image-root image-smoke buildah clean

## build: the shipped binary: static (CGO_ENABLED=0, so the same file runs in the
## FROM-scratch image), -trimpath, version and revision stamped.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/relay

## test: every unit, integration, property and attack test, with the race detector.
## The slowest packages come first (go test starts packages' tests in the order
## named; ./... adds the rest, each once), three at a time: most of their time is
## spent waiting on relays' timers, leases and proxies, not on the CPU, so at -p 2
## (GOMAXPROCS on a 2-core CI machine) the machine sat half idle.
TEST_FIRST := ./deploy ./internal/cluster ./attacks ./internal/cluster/chaos ./cmd/relay ./internal/relay ./internal/loadbench
TEST_P     ?= 3
test:
	$(GO) test -race -count=1 -timeout 20m -p $(TEST_P) $(TEST_FIRST) ./...

## run: the relay in plain-HTTP local mode on 127.0.0.1:8080 (never a public address).
run: build
	@echo "relay: binaries dial ws://$(ADDR)/v1/server, phones ws://$(ADDR)/v1/client; health at http://$(ADDR)/healthz"
	$(BIN) serve --insecure-listen $(ADDR)

## cluster: a local cluster (docs/cluster.md): an embedded NATS with JetStream and three relays on
## 127.0.0.1:8081-8083 in cluster mode; loopback only; Ctrl-C stops them.
cluster: build
	$(GO) run ./cmd/relay-cluster --relay $(BIN)

## cluster-figures: cross- vs same-instance round trip (p50/p99) against a bare NATS round trip, one
## phone's throughput both ways, and each process's CPU and each relay's allocations per frame, in one
## run (docs/cluster.md, Figures): a nats-server and two relays as processes on 127.0.0.1; about a
## minute. Fails (figures not for docs/) when other processes used over 10% of the CPU meanwhile;
## FIGURES_FLAGS=-figures-busy-ok prints a busy run's figures, marked busy.
cluster-figures:
	RELAY_CLUSTER_FIGURES=1 $(GO) test -count=1 -timeout 20m -run '^TestClusterFigures$$' -v ./internal/cluster -args $(FIGURES_FLAGS)

## cluster-scale: the cluster's scale model (docs/cluster.md, Scale model): 1, 2, 5 and 10 instances
## (processes) x 1k, 10k and 100k server-ids on one NATS on 127.0.0.1, claims driven through each
## instance's backplane; counted KV writes/s and NATS msgs/s, claim latency, memory and bucket bytes per
## server-id, failover after kill -9. Tables, JSON and plots into docs/cluster-scale/; the machine's
## load is recorded. About 8 minutes; run it on a quiet machine. SCALE_FLAGS="--ids 1000" etc.
cluster-scale:
	$(GO) run ./cmd/relay-cluster-scale --json docs/cluster-scale/report.json --markdown docs/cluster-scale/tables.md --plots docs/cluster-scale $(SCALE_FLAGS)

## chaos: the cluster's seeded fault harness (docs/cluster.md, "How it is tested under faults"): three relays
## (normal build) and a 3-node NATS on loopback under mixed traffic and every fault kind for CHAOS_DURATION
## (default 5m), a random seed unless CHAOS_SEED; a violation prints the seed and the command that replays it,
## and the run (report, history, relay logs) is saved under CHAOS_OUT. CHAOS_FAULTS=kill,stop,... picks kinds,
## CHAOS_STRICT=1 waives no known defect. make test runs its short form (seed 1, about a minute).
chaos:
	CHAOS_LONG=1 $(GO) test -count=1 -timeout 0 -run '^TestChaos$$' -v ./internal/cluster/chaos

## chaos-mutants: the chaos checker can fail: each cluster mutant (CHAOS_MUTANTS) is applied to a scratch copy
## and the short chaos run against it must report a violation (relay-mutate -checks); about 2 min a mutant.
CHAOS_MUTANTS ?= cluster-lease-never-expires,split-brain-slot-kept,cluster-stub-any-sender,stub-queue-outside-budget,cluster-key-tilde-collision
chaos-mutants:
	$(GO) run ./attacks/cmd/relay-mutate -only $(CHAOS_MUTANTS) -checks internal/cluster/chaos:TestChaos $(MUTATE_FLAGS)

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

## mutate: prove every scenario can fail. Each mutant in attacks/mutants/ (a patch weakening one
## defence; format in its README.md) is applied to a scratch copy, built, and attacked by the checks its
## header names; fails if a mutant survives, no longer applies or no longer builds.
## MUTANTS=name,name runs some; MUTATE_FLAGS="-baseline" first proves the checks pass unmutated.
.PHONY: mutate
mutate:
	$(GO) run ./attacks/cmd/relay-mutate $(if $(MUTANTS),-only $(MUTANTS)) $(MUTATE_FLAGS)

## load: admission-control figures on 127.0.0.1 (connections held at --max-conns 2000, refusals/s over
## the cap, a pair's RTT idle vs during the flood); about 10 s, loopback only. LOAD_FLAGS="--json" etc.
load: build
	$(GO) run ./attacks/cmd/relay-load --relay $(BIN) $(LOAD_FLAGS)

## bench: micro-benchmarks with -benchmem (envelope scan both ways, phone lookup, outbox, heartbeat
## scheduler, round trip against a direct echo), six counts each for benchstat.
bench:
	$(GO) test -run='^$$' -bench=. -benchmem -count=6 ./... | tee bench.txt

## perf: every table and plot of docs/performance.md in one run (cmd/relay-bench --suite all): the relay
## against the baseline forwarder, paired and pinned, on loopback only: traffic 128 B to 1 MiB both ways,
## ping-pong, idle connections 1k/10k/50k (as `ulimit -n` allows), and instructions per message under
## valgrind for the shipped build and a -pgo=off build (PGO's effect). Writes docs/perf/ and the tables in
## docs/performance.md; refuses (exit 3) if other processes took over 10 % of the CPUs during a run
## (PERF_FLAGS=--force writes them marked busy). About 20 minutes on 2 cores.
PERF_OUT ?= docs/perf
perf: build
	CGO_ENABLED=0 $(GO) build -trimpath -pgo=off -ldflags '$(LDFLAGS)' -o bin/relay-nopgo ./cmd/relay
	$(GO) run ./cmd/relay-bench --relay $(BIN) --relay-b bin/relay-nopgo --suite all \
	  --json $(PERF_OUT)/report.json --markdown $(PERF_OUT)/tables.md --plots $(PERF_OUT) --doc docs/performance.md $(PERF_FLAGS)

## pgo: cmd/relay/default.pgo, the CPU profile `go build` optimises the relay with: the relay built with
## -tags relay_cpuprofile (the shipped build links no runtime/pprof) profiled under make perf's traffic.
## Judge it with make pgo-check; about 2 minutes.
pgo:
	CGO_ENABLED=0 $(GO) build -trimpath -pgo=off -tags relay_cpuprofile -o bin/relay-cpuprofile ./cmd/relay
	$(GO) run ./cmd/relay-bench --relay bin/relay-cpuprofile --suite pgo --cycles 1 --cpuprofile $(CURDIR)/cmd/relay/default.pgo

## pgo-check: instructions per message (valgrind: independent of the machine's load) of the relay built
## with cmd/relay/default.pgo (relay) and without (relay_b); about 5 minutes.
pgo-check: build
	CGO_ENABLED=0 $(GO) build -trimpath -pgo=off -ldflags '$(LDFLAGS)' -o bin/relay-nopgo ./cmd/relay
	$(GO) run ./cmd/relay-bench --relay $(BIN) --relay-b bin/relay-nopgo --suite instr

## sbom: CycloneDX SBOM of the shipped binary (bin/relay: its linked modules, go.sum
## hashes, toolchain, stamped with VERSION), checked against `go version -m` of it.
sbom: build $(CYCLONEDX)
	$(CYCLONEDX) bin -json -output sbom.json -version $(SBOM_VERSION) $(BIN)
	RELAY_SBOM=$(CURDIR)/sbom.json RELAY_SBOM_BINARY=$(abspath $(BIN)) RELAY_SBOM_VERSION=$(SBOM_VERSION) \
	  $(GO) test -count=1 -run 'TestSBOM_MatchesBinary' -v ./deploy

$(CYCLONEDX):
	GOBIN=$(dir $(CYCLONEDX)) $(GO) install github.com/CycloneDX/cyclonedx-gomod/cmd/cyclonedx-gomod@$(CYCLONEDX_VERSION)

## deb: the Debian package bin/relay_VERSION_ARCH.deb (nfpm, deploy/nfpm.yaml): /usr/bin/relay,
## the units in /lib/systemd/system, sysusers.d and tmpfiles.d for the relay and relay-attack
## users and /var/lib/relay, /etc/relay/relay.toml as a conffile. Then TestDeb_* inspect it
## with dpkg-deb, install it into a throwaway root (dpkg --root; as root) and systemd-analyze
## verify the installed units against the installed binary, and build it again to compare.
deb: build $(NFPM)
	$(DEB_ENV) $(NFPM) package --config deploy/nfpm.yaml --packager deb --target $(DEB)
	RELAY_DEB=$(abspath $(DEB)) RELAY_NFPM=$(NFPM) $(DEB_ENV) \
	  $(GO) test -count=1 -run 'TestDeb' -v ./deploy

$(NFPM):
	GOBIN=$(dir $(NFPM)) $(GO) install github.com/goreleaser/nfpm/v2/cmd/nfpm@$(NFPM_VERSION)

## vulncheck: the offline vulnerability gate. govulncheck (pinned) reads a database
## built from the OSV records of a PINNED golang.org/x/vulndb module version (the
## online vuln.go.dev is unreachable here); exit non-zero on any vulnerability reachable
## from the relay's code, or if the gate cannot see the known one in its fixture.
## Moving the pin forward: docs/deploy.md, "Vulnerability gate".
vulncheck: vulndb $(GOVULNCHECK)
	@echo "vulncheck: fixture tools/vulncheck/testdata/reachable must report GO-2022-1059"
	@cd tools/vulncheck/testdata/reachable && \
	  out=$$($(GOVULNCHECK) -db file://$(VULNDB_DIR) ./... 2>&1); rc=$$?; \
	  if [ $$rc -ne 3 ] || ! echo "$$out" | grep -q 'GO-2022-1059'; then \
	    echo "$$out"; echo "vulncheck: the gate did not report the fixture's known vulnerability (exit $$rc)"; exit 1; fi
	$(GOVULNCHECK) -db file://$(VULNDB_DIR) ./...

$(GOVULNCHECK):
	GOBIN=$(dir $(GOVULNCHECK)) $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)

## vulndb: index the pinned vulndb's OSV records once into VULNDB_DIR (cached by version).
vulndb: $(VULNDB_DIR)/index/db.json
$(VULNDB_DIR)/index/db.json:
	$(GO) mod download golang.org/x/vulndb@$(VULNDB_VERSION)
	rm -rf $(VULNDB_DIR).tmp
	$(GO) run golang.org/x/vulndb/cmd/indexdb@$(VULNDB_VERSION) \
	  -vulns $$($(GO) env GOMODCACHE)/golang.org/x/vulndb@$(VULNDB_VERSION)/data/osv -out $(VULNDB_DIR).tmp
	rm -rf $(VULNDB_DIR) && mv $(VULNDB_DIR).tmp $(VULNDB_DIR)

## units: systemd-analyze verify and security --offline=true (exposure 2.0 at most) on
## every unit in deploy/ (systemd-analyze comes with systemd; no service manager needed).
units:
	$(GO) test -count=1 -run 'TestUnits' -v ./deploy

## image: the FROM-scratch container image (Containerfile) of the static bin/relay, built
## with buildah (no daemon; vfs storage, chroot isolation). IMAGE names it. When buildah
## is missing it runs `apt-get install buildah` (Debian; needs root) and says so first. Docker format:
## the OCI format has no HEALTHCHECK.
IMAGE   ?= localhost/pyrycode-relay:$(SBOM_VERSION)
BUILDAH := buildah --storage-driver vfs
image: build image-root buildah
	$(BUILDAH) bud --isolation chroot --format docker -q -f Containerfile -t $(IMAGE) .

## image-root: the image's directory skeleton (the certificate cache at 0700).
image-root:
	rm -rf bin/image-root && install -d -m 0700 bin/image-root/var/lib/relay/certs

## image-smoke: relay version, a serve /healthz check and the image's HEALTHCHECK inside the image.
image-smoke: image
	BUILDAH='$(BUILDAH)' tools/image/smoke.sh $(IMAGE) $(BIN)

buildah:
	@command -v buildah >/dev/null || { echo "make: buildah not found: installing it with apt-get install buildah (Debian's package; needs root)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah >/dev/null; }

clean:
	rm -rf bin bench.txt sbom.json
