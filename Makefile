# ckptfs — the two commands a new user needs:
#   make demo   record a guest (non-deterministically, then deterministically),
#               mount it, show what sparse checkpoints buy, replay every interval
#   make test   every test, installing what they need
# Both install their Debian packages (apt-get) and Go modules themselves.

export PATH := /usr/local/go/bin:$(PATH)
# Pure Go: with cgo, Pebble's block cache allocates every block with calloc,
# which costs a third of the store's read throughput (measured: 1.56 vs
# 0.97 GiB/s for 1 MiB reads). Nothing in ckptfs needs cgo.
export CGO_ENABLED := 0
GO       ?= go
BIN      := bin/ckptfs
APT_PKGS := fuse3 attr qemu-system-x86 busybox-static cpio gcc
PLUGIN   := bin/ckptfs-ws.so
GUEST_DIR ?= /var/cache/ckptfs-guest
export CKPTFS_GUEST_DIR ?= $(GUEST_DIR)
FUZZTIME ?= 5s

.PHONY: all build deps guest test fuzz bench demo clean

all: build

build: $(PLUGIN)
	$(GO) build -o $(BIN) ./cmd/ckptfs

# The working-set TCG plugin, the one C file: QEMU loads it into a
# deterministic recording (kvmrec/wsplugin/wsplugin.c says why).
$(PLUGIN): kvmrec/wsplugin/wsplugin.c
	@mkdir -p bin
	cc -O2 -Wall -Wextra -shared -fPIC -o $@ $<

# Debian packages only when missing (apt-get update is slow), then modules.
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	$(GO) mod download

# The QEMU test guest: Debian's cloud kernel and a busybox initramfs.
guest: deps
	bash test/integration/guest/build-guest.sh $(GUEST_DIR)

test: deps guest build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory fuzz

# A short fuzzing pass on top of the seed corpora (which `go test` runs).
fuzz:
	$(GO) test ./index/rawfmt -run '^$$' -fuzz '^FuzzParseList$$' -fuzztime $(FUZZTIME)
	$(GO) test ./index/rawfmt -run '^$$' -fuzz '^FuzzReadDump$$' -fuzztime $(FUZZTIME)
	$(GO) test ./index -run '^$$' -fuzz '^FuzzImportWorkingSet$$' -fuzztime $(FUZZTIME)

# Benchmarks report ratios against baselines measured in the same run.
bench: deps guest build
	$(GO) run ./test/integration/benchtable

demo: deps guest build
	./$(BIN) demo

clean:
	rm -rf bin
