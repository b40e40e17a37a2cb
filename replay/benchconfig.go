package replay

import (
	"fmt"
	"log/slog"
	"time"
)

// Prefetch says who puts W_i into the page cache when modes (b) and (c)
// open <i>.ram.
type Prefetch string

const (
	// PrefetchAuto relies on the mount when Mount is a FUSE file system and
	// emulates its prefetch otherwise (a plain directory with the layout).
	PrefetchAuto Prefetch = ""
	// PrefetchMount relies on the mount: the child only opens and maps.
	PrefetchMount Prefetch = "mount"
	// PrefetchEmulate makes the child itself ask for W_i right after open
	// (posix_fadvise WILLNEED over each run), timed as part of the load.
	PrefetchEmulate Prefetch = "emulate"
)

// CheckConcurrency checks a list of concurrencies (a --concurrency flag);
// an empty list means the default, 1, 4, 16.
func CheckConcurrency(ks []int) error {
	for _, k := range ks {
		if k < 1 || k > 1024 {
			return fmt.Errorf("%w: concurrency %d (want numbers 1..1024)", ErrBadConfig, k)
		}
	}
	return nil
}

// DropPolicy says which caches Bench drops so that each batch starts cold.
type DropPolicy string

const (
	// DropAll writes /proc/sys/vm/drop_caches before each batch (root
	// only; else it falls back to DropFiles) and drops each replayed
	// file's page cache when its child exits. The whole machine's clean
	// caches go, the mount's store included.
	DropAll DropPolicy = ""
	// DropFiles only drops each replayed file's page cache when its child
	// exits (posix_fadvise DONTNEED): no effect on the rest of the
	// machine, but the store behind a mount stays warm, and so does the
	// first batch.
	DropFiles DropPolicy = "files"
	// DropNone leaves all caches warm.
	DropNone DropPolicy = "none"
)

// BenchConfig configures Bench. Mount and Run are required.
type BenchConfig struct {
	Mount string // the mount (or a directory with the same layout)
	Run   string
	// NoPrefetchMount is a second mount of the same store with
	// --prefetch none, for mode (d); without it (d) is skipped with a note.
	NoPrefetchMount string
	// Intervals to replay; default: every interval with a working set.
	Intervals []int
	// Concurrency lists the numbers of replays at once; default 1, 4, 16.
	Concurrency []int
	// Modes to measure; default AllModes().
	Modes []Mode
	// Prefetch says who prefetches W_i in modes (b) and (c); default
	// PrefetchAuto.
	Prefetch Prefetch
	// Drop says how each batch starts cold; default DropAll (doc.go,
	// "Cold starts").
	Drop DropPolicy
	// DropStore, if set, empties the caches of the process serving the
	// mount (its store's block cache) before each batch, with drop_caches
	// (DropAll only). Without it that process stays warm after the first
	// batch: later batches then read from its memory, not from disk.
	DropStore func() error
	// Logger receives progress; nil means none.
	Logger *slog.Logger
	// Executable is the program re-executed for children; default
	// os.Executable(). It must call MaybeRunChild first.
	Executable string
	// BatchTimeout bounds one batch of children; default 10 minutes.
	BatchTimeout time.Duration
	// MemoryLimit skips a (mode, K) whose estimated memory exceeds it;
	// default 80 % of MemAvailable when the bench starts.
	MemoryLimit uint64
}
