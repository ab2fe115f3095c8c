# kipvs: build, test, demo. `make test` sets up a fresh Debian machine by itself
# (apt packages, the test VM image, etcd + kube-apiserver) and runs every test.

GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
export PATH := /usr/local/go/bin:$(PATH)
# go.mod names the toolchain (go1.26.10: the standard library fixes govulncheck
# asks for); the installed Go's go.env says GOTOOLCHAIN=local, so let it switch.
# The toolchain comes from the Go module proxy (golang.org/toolchain) once.
export GOTOOLCHAIN ?= auto

.PHONY: all build static setup test test-unit demo clean bench bench-report

all: build

## build: the kipvs binary in bin/
build:
	$(GO) build -ldflags '$(LDFLAGS)' -o bin/kipvs ./cmd/kipvs

## static: a static kipvs for the container image and the test VM
static:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/kipvs ./cmd/kipvs

## setup: install what the real-kernel and API-server tests need (idempotent, cached
## under $${KIPVS_CACHE:-$$HOME/.cache/kipvs})
setup:
	$(GO) run ./test/vm/cmd/vmimage
	test/apiserver/build.sh

## test-unit: unit tests only (fakes; no VM, no API server)
test-unit:
	$(GO) build ./... && $(GO) vet ./... && $(GO) test ./...

## test: everything: build, vet, unit, real-kernel (qemu) and end-to-end tests.
## KIPVS_REQUIRE_* turn "skipped: cannot run here" into failures.
test: setup
	$(GO) build ./...
	$(GO) vet ./...
	$(GO) vet -tags kerneltest ./test/...
	KIPVS_REQUIRE_VM=1 KIPVS_REQUIRE_APISERVER=1 $(GO) test -count=1 -timeout 45m ./...
	$(MAKE) fuzz FUZZTIME=10s
	$(MAKE) vuln

## demo: a local API server, kipvs in a VM, sample Services and traffic through a ClusterIP
demo: setup
	$(GO) run ./test/demo

clean:
	rm -rf bin

## bench: the scalability benchmarks (issue 7): kipvs beside kube-proxy (ipvs, nftables,
## iptables modes) in the VM against the test API server. Writes docs/bench/results.json,
## then BENCHMARKS.md and the plots in docs/bench/ from it. Long: see BENCHMARKS.md.
## BENCHFLAGS passes flags to the runner (go run ./test/bench/cmd/bench -h).
BENCHFLAGS ?=
bench: setup
	$(GO) run ./test/bench/cmd/bench -out docs/bench/results.json $(BENCHFLAGS)
	$(MAKE) bench-micro
	$(MAKE) bench-report

## bench-micro: the model and plan micro-benchmarks at 1k/10k/50k Services
## (go test -bench, ns/op and allocs/op) into docs/bench/gobench.txt
MICROBENCH ?= BuildModel|IncrementalSync|ReconcileFull|FirstFullSync|OneChangeSync
.PHONY: bench-micro
bench-micro:
	$(GO) test -run '^$$' -bench '$(MICROBENCH)' -benchmem -count 1 ./proxier > docs/bench/gobench.txt.tmp
	mv docs/bench/gobench.txt.tmp docs/bench/gobench.txt

## bench-report: BENCHMARKS.md and docs/bench/*.png from docs/bench/results.json
## (and the micro-benchmarks from docs/bench/gobench.txt and a person's analysis of
## the figures from docs/bench/analysis.md, when they exist)
## docs/bench/results-*.json (runs made with -proxies/-scales subsets, e.g. kipvs
## re-run after a change) are folded over results.json in name order.
comma := ,
empty :=
space := $(empty) $(empty)
BENCH_IN ?= $(subst $(space),$(comma),$(strip docs/bench/results.json $(sort $(wildcard docs/bench/results-*.json))))
bench-report:
	$(GO) run ./test/bench/cmd/report -in $(BENCH_IN) -md BENCHMARKS.md -plots docs/bench \
		$(if $(wildcard docs/bench/gobench.txt),-gobench docs/bench/gobench.txt) \
		$(if $(wildcard docs/bench/analysis.md),-analysis docs/bench/analysis.md)

## image-binary: the static Linux kipvs the container image ships, in bin/
## (the Dockerfile runs it; GOARCH=arm64 etc. cross-compiles)
GOARCH ?= $(shell $(GO) env GOARCH)
.PHONY: image-binary
image-binary:
	CGO_ENABLED=0 GOOS=linux GOARCH=$(GOARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/kipvs ./cmd/kipvs

## fuzz: run each fuzz target for FUZZTIME (default 10s). A failing input is
## written to the package's testdata/fuzz/<Target>/: commit it as a regression seed.
## Go 1.26's fuzz coordinator can end a run with "context deadline exceeded" and
## no failing input (golang/go#75804, fixed in Go 1.27): that is reported, not failed.
FUZZTIME ?= 10s
FUZZ_TARGETS := ./proxier:FuzzModel ./endpoints:FuzzState ./endpoints:FuzzParseIP ./proxier/config:FuzzLoad
.PHONY: fuzz
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; dir=$$pkg/testdata/fuzz/$$name; \
		before=$$(ls $$dir 2>/dev/null | wc -l); \
		echo "== fuzz $$pkg $$name for $(FUZZTIME)"; \
		out=$$($(GO) test $$pkg -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) 2>&1); rc=$$?; \
		echo "$$out" | grep -v '^I[0-9]'; \
		after=$$(ls $$dir 2>/dev/null | wc -l); \
		if [ $$rc -ne 0 ]; then \
			if [ $$after -eq $$before ] && echo "$$out" | grep -q '^    context deadline exceeded$$'; then \
				echo "fuzz: $$name: no failing input; Go's coordinator ended with 'context deadline exceeded' (golang/go#75804)"; \
			else \
				echo "fuzz: $$name FAILED (a failing input, if any, is in $$dir)"; exit 1; \
			fi; \
		fi; \
	done

## vuln: govulncheck over every package. Known vulnerabilities in code kipvs calls fail it,
## and so does any error (no database, no network): there is no "not checked" success.
## The database defaults to a local one that hack/vulndb.sh builds once (cached under
## $${KIPVS_CACHE:-$$HOME/.cache/kipvs}) from the reports in golang.org/x/vulndb at
## VULNDB_VERSION, fetched through the Go module proxy: https://vuln.go.dev is not
## reachable from CI. GOVULNDB=https://vuln.go.dev or file:///path overrides it.
## Newer reports: VULNDB_VERSION=$$(go list -m -f '{{.Version}}' golang.org/x/vulndb@latest).
GOVULNCHECK ?= golang.org/x/vuln/cmd/govulncheck@v1.10.0
VULNDB_VERSION ?= v0.0.0-20261105234957-e22db6528018
GOVULNDB ?=
.PHONY: vuln
vuln:
	@db='$(GOVULNDB)'; \
	if [ -z "$$db" ]; then db=file://$$(GO='$(GO)' hack/vulndb.sh $(VULNDB_VERSION)) || exit 1; fi; \
	echo "== $(GOVULNCHECK) -db $$db ./..."; \
	$(GO) run $(GOVULNCHECK) -db "$$db" ./...
