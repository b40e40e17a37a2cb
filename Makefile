# ckptfs — the two commands a new user needs:
#   make demo   record a guest (non-deterministically, then deterministically),
#               mount it, show what sparse checkpoints buy, replay every interval
#   make test   every test, installing what they need
# Both install their Debian packages (apt-get) and Go modules themselves.

export PATH := /usr/local/go/bin:$(PATH)
# Pure Go: with cgo, Pebble's block cache allocates every block with calloc,
# which costs a third of the store's read throughput (measured: 1.56 vs
# 0.97 GiB/s for 1 MiB reads). Nothing in ckptfs needs cgo; only the race
# detector does (`make race`, part of `make test`).
export CGO_ENABLED := 0
GO       ?= go
BIN      := bin/ckptfs
APT_PKGS := fuse3 attr qemu-system-x86 busybox-static cpio gcc slurm-wlm
PLUGIN   := bin/ckptfs-ws.so
GUEST_DIR ?= /var/cache/ckptfs-guest
export CKPTFS_GUEST_DIR ?= $(GUEST_DIR)
FUZZTIME ?= 5s

.PHONY: all build deps guest test race fuzz bench demo clean

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

# make test installs Slurm (APT_PKGS) for the replay-run --slurm test, which
# starts a cluster of one node, so that test must not skip here.
test: export CKPTFS_REQUIRE_SLURM = 1
test: deps guest build
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...
	$(MAKE) --no-print-directory race
	$(MAKE) --no-print-directory fuzz

# The race detector over the packages whose goroutines share state: the
# mount (readers, prefetch, the removal watcher), the store (concurrent
# reads, background compaction), the recorder (on the synthetic guest) and
# the QMP client. -race needs cgo, hence gcc in APT_PKGS; only this run
# turns cgo on, the binaries stay pure Go. Left to the plain run: tests of
# one goroutine, or of processes killed from outside, that take minutes
# under -race (bit flips in tables, import children and a recorder killed
# at random, a long replay log, a QEMU guest booted under TCG), and
# TestRecordFullDisk: under -race's timing the disk often fills in Pebble's
# WAL, which ends the process by design (index/store.go, Fatalf), instead
# of in a table, which Record reports.
RACE_PKGS ?= ./fs/... ./index/... ./internal/... ./kvmrec
RACE_SKIP ?= ^(TestCorruption|TestCrashDuringImport|TestReplayLog|TestRecordQEMU|TestKillRecorder|TestRecordFullDisk)$$
race: deps
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 30m -skip '$(RACE_SKIP)' $(RACE_PKGS)

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
