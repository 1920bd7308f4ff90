# Beam's build, test and benchmark entry points. `make test` is what CI runs.
GO ?= go
PKGS := ./...

.PHONY: build test bench stress lint fuzz dist release packages npm image

# The version beam reports: git's description of the checkout, if any
# (else the Go toolchain's VCS stamp, else "devel"). bin/beam is static,
# without cgo, as every release ships it (a cgo build maps the C library
# too: 1.4 MiB more resident in each daemon).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)

build:
	CGO_ENABLED=0 $(GO) build -ldflags "-X beam.dev/beam/internal/version.override=$(VERSION)" -o bin/beam ./cmd/beam

# Checks the race detector switches off (it allocates and inflates RSS on
# its own), run once more without it: the receive path's zero allocations,
# the idle engines' process RSS, and two real daemons' peak, heap and idle
# memory around bulk transfers, direct and relayed (TestDaemonMemory and
# TestDaemonMemoryRelay are built only without -race: the daemons never
# run with it, but it would slow the transfers' sender and sink in the
# test process).
NORACE_PKGS := ./netstack/ ./netstack/internal/bind/ ./cmd/beam/
NORACE_RUN := ^(TestReceiveDoesNotAllocate|TestIdleMemory|TestDaemonMemory|TestDaemonMemoryRelay)$$
NORACE_TESTS := 4

# The whole suite: vet, every package's tests with the race detector, then
# the checks above without it. The last step fails if it ran fewer than
# NORACE_TESTS tests, so a rename cannot switch them off silently.
test:
	$(GO) vet $(PKGS)
	$(GO) test -race -timeout 30m -count=1 $(PKGS)
	@echo "$(GO) test -count=1 -run '$(NORACE_RUN)' $(NORACE_PKGS)"
	@out=$$($(GO) test -count=1 -v -run '$(NORACE_RUN)' $(NORACE_PKGS) 2>&1); s=$$?; \
	  echo "$$out" | grep -v '^=== '; \
	  n=$$(echo "$$out" | grep -c '^--- PASS'); \
	  if [ $$s -ne 0 ]; then exit $$s; fi; \
	  if [ "$$n" -ne $(NORACE_TESTS) ]; then echo "make test: $$n of $(NORACE_TESTS) no-race checks ran"; exit 1; fi

# Benchmarks report ratios against a baseline measured in the same run.
# Each runs BENCHCOUNT times for about BENCHTIME (a benchmark whose one
# iteration takes longer, such as a 1,000-node registration or a daemon's
# idle RSS, runs once per count); the summary after the raw output gives
# each figure's median and spread. BENCH selects benchmarks by name. The
# whole run took 13 minutes on 2 busy cores (1,000-node registration and
# policy change are most of it). cmd/beam's benchmarks run the real binary
# (a server and daemons started afresh for each count, about 10 s each
# with their setup); they are the figures that count.
BENCH ?= .
BENCHCOUNT ?= 5
BENCHTIME ?= 1s
bench:
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime $(BENCHTIME) -count $(BENCHCOUNT) -timeout 60m $(PKGS) 2>&1 | $(GO) run ./internal/benchsum

# The suite five times in a row, then twice as two suites at once, stopping
# at the first failure: a bound that fails by chance on a loaded machine
# shows here. Each suite is limited to STRESS_LIMIT; the logs of the
# concurrent pairs are kept in bin/. On 2 cores this takes 9 times as long
# as one make test (two suites at once take about twice as long as one).
STRESS_LIMIT ?= 90m
stress:
	@mkdir -p bin
	@for i in 1 2 3 4 5; do \
	  echo "stress: suite $$i of 5"; \
	  timeout $(STRESS_LIMIT) $(MAKE) --no-print-directory test || { echo "stress: suite $$i failed"; exit 1; }; \
	done
	@for i in 1 2; do \
	  echo "stress: two suites at once, $$i of 2 (logs in bin/stress-$$i-a.log, bin/stress-$$i-b.log)"; \
	  timeout $(STRESS_LIMIT) $(MAKE) --no-print-directory test >bin/stress-$$i-a.log 2>&1 & a=$$!; \
	  timeout $(STRESS_LIMIT) $(MAKE) --no-print-directory test >bin/stress-$$i-b.log 2>&1 & b=$$!; \
	  wait $$a; sa=$$?; wait $$b; sb=$$?; \
	  if [ $$sa -ne 0 ] || [ $$sb -ne 0 ]; then \
	    grep -h -e '^--- FAIL' -e '^FAIL' bin/stress-$$i-a.log bin/stress-$$i-b.log; \
	    echo "stress: concurrent pair $$i failed"; exit 1; \
	  fi; \
	done
	@echo "stress: 7 suites passed"

lint:
	@test -z "$$(gofmt -l .)" || (gofmt -l . && echo "gofmt: files above need formatting" && exit 1)
	$(GO) vet $(PKGS)

# A short fuzzing pass over every fuzz target.
fuzz:
	@for pkg in $$($(GO) list $(PKGS)); do \
	  for t in $$($(GO) test -list 'Fuzz.*' $$pkg | grep ^Fuzz); do \
	    $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime 10s $$pkg || exit 1; \
	  done; \
	done

# Beam builds for macOS, Windows and 64-bit ARM Linux: vet every package for
# each. On Windows the network-namespace labs (Linux only) and netstack's
# tests (getrusage) are built but not vetted.
CROSS_WINDOWS_SKIP := -e /beamtest/nslab -e /beamtest/natlab -e /beamtest/edgelab -e '/netstack$$'
cross:
	GOOS=darwin GOARCH=arm64 $(GO) vet $(PKGS)
	GOOS=linux GOARCH=arm64 $(GO) vet $(PKGS)
	GOOS=windows GOARCH=amd64 $(GO) build $(PKGS)
	GOOS=windows GOARCH=amd64 $(GO) vet $$($(GO) list $(PKGS) | grep -v $(CROSS_WINDOWS_SKIP))

# Release builds: a static binary for each platform Beam ships (the list
# internal/release.Platforms holds; a test compares them), named
# beam-GOOS-GOARCH, in DIST.
DIST ?= bin/dist
RELEASE_PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64
RELEASE_LDFLAGS := -s -w -X beam.dev/beam/internal/version.override=$(VERSION)
dist:
	@mkdir -p $(DIST)
	@for p in $(RELEASE_PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; if [ $$os = windows ]; then ext=.exe; fi; \
	  echo "build $(DIST)/beam-$$os-$$arch$$ext"; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags "$(RELEASE_LDFLAGS)" -o $(DIST)/beam-$$os-$$arch$$ext ./cmd/beam || exit 1; \
	done

# Debian and RPM packages for linux amd64 and arm64 (beam, the systemd
# units of every role, sysusers.d and tmpfiles.d entries, example settings
# in /etc/beam), built with nfpm.
packages:
	@$(MAKE) --no-print-directory dist RELEASE_PLATFORMS="linux/amd64 linux/arm64"
	$(GO) run ./tools/release packages -version "$(VERSION)" -bin-dir $(DIST) -out $(DIST)

# Everything a release publishes, in DIST: the five binaries, the packages
# and SHA256SUMS over them.
release: dist
	$(GO) run ./tools/release packages -version "$(VERSION)" -bin-dir $(DIST) -out $(DIST)
	$(GO) run ./tools/release sums $(DIST)

# The npm packages of `npx beam`, in bin/npm: the launcher (beam) and one
# package per platform (@beam/linux-x64, ...), each ready for npm publish.
npm: dist
	$(GO) run ./tools/release npm -version "$(VERSION)" -bin-dir $(DIST) -out bin/npm

# The container image from the Dockerfile, where a builder is available
# (CI lints the Dockerfile instead: TestDockerfile in internal/release).
DOCKER ?= docker
image:
	$(DOCKER) build --build-arg VERSION="$(VERSION)" -t beam:latest .
