# Beam's build, test and benchmark entry points. `make test` is what CI runs.
GO ?= go
PKGS := ./...

.PHONY: build test bench lint fuzz

build:
	$(GO) build -o bin/beam ./cmd/beam

# The whole suite: vet, then every package's tests with the race detector.
test:
	$(GO) vet $(PKGS)
	$(GO) test -race -timeout 30m -count=1 $(PKGS)

# Benchmarks report ratios against a baseline measured in the same run.
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m $(PKGS)

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
