package kvmrec

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
	"github.com/prometheus/client_golang/prometheus"
)

// pageSize is the frame size.
const pageSize = index.PageSize

// recorderName is what the store records as the run's recorder.
const recorderName = "kvmrec/qemu"

// Trackers.
const (
	TrackerPagemap = "pagemap"
	TrackerHash    = "hash"
)

// Errors Record refuses with (besides qmp.ErrNotQMP, index.ErrRunExists and
// index.ErrBadRunName). Test them with errors.Is.
var (
	// ErrNotMapped: the VMM has not mapped the RAM file (shared).
	ErrNotMapped = errors.New("kvmrec: RAM file not mapped by the VMM")
	// ErrRAMSizeMismatch: the VMM maps a different size than the file has.
	ErrRAMSizeMismatch = errors.New("kvmrec: RAM size mismatch")
	// ErrVMGone: the VMM exited or closed the QMP socket while recording.
	// Every checkpoint completed before is committed.
	ErrVMGone = errors.New("kvmrec: the VM exited or closed its QMP socket")
	// ErrBadConfig: Config is not usable.
	ErrBadConfig = errors.New("kvmrec: bad configuration")
)

// Config describes a recording.
type Config struct {
	Run       string // run name in the store; must not exist
	QMPSocket string // QEMU's -qmp unix socket
	MemPath   string // QEMU's memory-backend-file mem-path (share=on)

	// Interval is how long the VM runs between two checkpoints (cont to
	// the next stop), so that long pauses do not eat into it.
	Interval time.Duration
	Count    int           // stop after this many checkpoints; 0: no limit
	Duration time.Duration // stop after this long (the boundary at Duration is the last); 0: no limit

	Tracker     string // TrackerPagemap (default) or TrackerHash
	DeviceState bool   // save QEMU's device state with every checkpoint
	// ExactWorkingSets (pagemap tracker) unmaps the changed frames during
	// the pause too, instead of right after it: working sets lose the
	// frames changed in the interval before, but every changed frame costs
	// the pause a TLB flush (see doc.go, "Deferred unmapping"). With the
	// pre-copy few frames are left for the pause, so both modes give
	// about the same pauses and working sets.
	ExactWorkingSets bool
	// NoPrecopy (pagemap tracker) does all of a checkpoint's work in the
	// pause. By default the present frames are unmapped, hashed and the
	// changed ones copied right before the stop, with the VM running, and
	// the pause handles only what the VM touched since (see doc.go,
	// "Pre-copy").
	NoPrecopy bool
	// PackLive builds each interval's working-set pack (index.PackInterval)
	// as soon as W_i is committed, on a goroutine of its own, so that
	// replays started during the recording load fast. A packer that falls
	// behind skips intervals (the caller's final index.PackRun fills them
	// in); it never delays a checkpoint.
	PackLive bool

	Logger *slog.Logger // default slog.Default()
	// OnCheckpoint is called after each commit, in checkpoint order, from
	// the recorder's store goroutine; it must return quickly.
	OnCheckpoint func(CheckpointStats)
	// Registerer receives the recorder's Prometheus metrics (labelled with
	// the run); nil registers none.
	Registerer prometheus.Registerer
	// PauseTimeout bounds one pause (stop to cont, device state included);
	// default 30 s. The VM is resumed even when it expires.
	PauseTimeout time.Duration
	// Meta is stored with the run (run.json "meta"); "qemu_args" is filled
	// from the VMM's command line unless given.
	Meta map[string]string
}

// Phases are the parts of one pause. Pageout runs concurrently with Scan;
// Device is the time spent waiting for the device state after the scan.
type Phases struct {
	Stop    time.Duration // the stop command
	Pagemap time.Duration // reading the VMM's page table
	Scan    time.Duration // hashing candidate frames and copying the changed ones
	Pageout time.Duration // process_madvise(MADV_PAGEOUT) on the present runs
	Device  time.Duration // waiting for the migration stream
	Cont    time.Duration // the cont command
	// Precopy is the work done right before the stop, with the VM
	// running; not part of the downtime.
	Precopy time.Duration
}

// CheckpointStats describe one committed checkpoint.
type CheckpointStats struct {
	index.CheckpointStats // as stored: frames, bytes, downtime, ...

	Downtime time.Duration // stop to cont, as the recorder measured it
	// VMDowntime is how long the VM itself was stopped: from the VMM's
	// STOP event to its RESUME event, by the VMM's timestamps. It leaves
	// out the QMP round trips that Downtime includes; 0 when the VMM sent
	// no such events.
	VMDowntime time.Duration
	Phases     Phases
	Present    uint64 // frames present in the VMM's page table at the stop (pagemap tracker)
	Scanned    uint64 // frames hashed during the pause
	Copied     uint64 // frames copied during the pause (the changed ones)
	// PrecopyScanned and Precopied are the frames hashed and copied before
	// the stop (see Config.NoPrecopy); a pre-copied frame scanned again in
	// the pause is copied again or dropped.
	PrecopyScanned, Precopied uint64
	// Deferred is the number of present, changed frames left mapped
	// during the pause and unmapped after it; they count as touched in
	// interval i as well (pagemap tracker, not in exact mode).
	Deferred uint64
	// DeferredUnmap is how long unmapping the previous checkpoint's
	// deferred frames took, with the VM running.
	DeferredUnmap time.Duration
	// WorkingSet is W_{i-1}, the frames interval i-1 touched; nil for
	// checkpoint 0 and for the hash tracker.
	WorkingSet *roaring.Bitmap
	// Dirty is D_{i-1}, the frames whose content changed during interval
	// i-1; for checkpoint 0 every non-zero frame.
	Dirty *roaring.Bitmap
	// StoreTime is the time spent writing and committing the checkpoint,
	// outside the pause.
	StoreTime time.Duration
	// Lagging reports that the previous checkpoint was not yet committed
	// when this one was taken: the store does not keep up.
	Lagging bool
	// BoundaryRetries counts the extra stops a deterministic recording
	// made because a vCPU stood on an interrupt handler's entry.
	BoundaryRetries int
}

// Summary describes a finished recording.
type Summary struct {
	Run         string
	RAMSize     uint64
	Tracker     string
	Checkpoints int    // committed checkpoints, 0..Checkpoints-1
	Stopped     string // why the recording ended: "count", "duration", "canceled", "error"
	Elapsed     time.Duration

	MedianDowntime, P99Downtime, MaxDowntime time.Duration
	BytesStored                              uint64 // frames and device state added to the store
	DeviceStateBytes                         uint64
	Lagging                                  int // checkpoints taken before the previous one was committed
}

func (cfg *Config) check() error {
	if err := index.ValidRunName(cfg.Run); err != nil {
		return err
	}
	if cfg.QMPSocket == "" || cfg.MemPath == "" {
		return fmt.Errorf("%w: the QMP socket and the RAM file (mem-path) are required", ErrBadConfig)
	}
	if cfg.Interval <= 0 {
		return fmt.Errorf("%w: interval must be positive, got %v", ErrBadConfig, cfg.Interval)
	}
	if cfg.Count < 0 || cfg.Duration < 0 {
		return fmt.Errorf("%w: count and duration must not be negative", ErrBadConfig)
	}
	switch cfg.Tracker {
	case "":
		cfg.Tracker = TrackerPagemap
	case TrackerPagemap, TrackerHash:
	default:
		return fmt.Errorf("%w: unknown tracker %q (pagemap, hash)", ErrBadConfig, cfg.Tracker)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.PauseTimeout <= 0 {
		cfg.PauseTimeout = 30 * time.Second
	}
	return nil
}
