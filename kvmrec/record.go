package kvmrec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/durations"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/prometheus/client_golang/prometheus"
)

// PageSize is the frame size.
const PageSize = index.PageSize

// Recorder is what the store records as the run's recorder.
const Recorder = "kvmrec/qemu"

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

// Record attaches to a running QEMU and records checkpoints into st until
// Count or Duration is reached, ctx is canceled, or the VM goes away.
//
// Cancelling ctx is the normal way to stop: a pause in progress completes
// (the VM is resumed), every checkpoint taken is committed, and Record
// returns a nil error with Summary.Stopped "canceled". When the VM exits or
// closes the QMP socket, the error wraps ErrVMGone and the checkpoints taken
// before are committed. Record refuses, before touching the VM or the store:
// a run that exists (index.ErrRunExists), a socket that is not QMP
// (qmp.ErrNotQMP), a RAM file QEMU has not mapped shared (ErrNotMapped) and
// a RAM size that does not match (ErrRAMSizeMismatch).
func Record(ctx context.Context, st *index.Store, cfg Config) (Summary, error) {
	if err := cfg.check(); err != nil {
		return Summary{}, err
	}
	return record(ctx, st, cfg, nil, nil)
}

// record is Record, with the additions of a deterministic recording when
// det is not nil; after runs once the last checkpoint is committed, with
// the recorder's QMP connection (QEMU serves one at a time), before the
// run's writer closes.
func record(ctx context.Context, st *index.Store, cfg Config, det *detState, after func(*qmp.Client, *index.RunWriter) error) (Summary, error) {
	if _, err := st.Run(cfg.Run); err == nil {
		return Summary{}, fmt.Errorf("%w: %q", index.ErrRunExists, cfg.Run)
	} else if !errors.Is(err, index.ErrRunNotFound) {
		return Summary{}, err
	}
	r, err := attach(ctx, cfg)
	if err != nil {
		return Summary{}, err
	}
	defer r.close()
	r.det = det
	meta := map[string]string{
		"exact_working_sets": strconv.FormatBool(cfg.ExactWorkingSets),
		"interval":           cfg.Interval.String(),
		"mem_path":           absPath(cfg.MemPath),
		"device_state":       strconv.FormatBool(cfg.DeviceState),
		"vmm":                r.vmmVersion,
	}
	// The VMM's command line lets `replay qemu` rebuild the same machine.
	if raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.pid)); err == nil {
		if args := strings.Split(strings.TrimRight(string(raw), "\x00"), "\x00"); len(args) > 1 {
			if j, err := json.Marshal(args[1:]); err == nil {
				meta["qemu_args"] = string(j)
			}
		}
	}
	for k, v := range cfg.Meta {
		meta[k] = v
	}
	spec := index.RunSpec{Name: cfg.Run, RAMSize: r.m.size, Recorder: Recorder, Tracker: cfg.Tracker, Meta: meta}
	if det != nil {
		spec.Deterministic = true
		var args []string
		if err := json.Unmarshal([]byte(meta["qemu_args"]), &args); err == nil {
			spec.QEMUArgs = args
		}
	}
	w, err := st.CreateRun(spec)
	if err != nil {
		return Summary{}, err
	}
	defer w.Close()
	r.metrics = newMetrics(cfg.Registerer, cfg.Run)
	cfg.Logger.Info("recording", "run", cfg.Run, "pid", r.pid, "ram", r.m.size, "tracker", cfg.Tracker,
		"interval", cfg.Interval, "device_state", cfg.DeviceState, "deterministic", det != nil)
	sum, err := r.loop(ctx, st, w)
	if after != nil && sum.Checkpoints > 0 {
		if aerr := after(r.qmp, w); aerr != nil {
			err = errors.Join(err, aerr)
		}
	}
	return sum, err
}

// livePacker packs intervals as their working sets are committed. Its
// queue is short: an interval that finds it full is left to the final
// pass, so packing never holds up the store.
type livePacker struct {
	st   *index.Store
	run  string
	log  *slog.Logger
	in   chan int
	done chan struct{}
}

func startLivePacker(ctx context.Context, st *index.Store, run string, log *slog.Logger) *livePacker {
	p := &livePacker{st: st, run: run, log: log, in: make(chan int, 2), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := range p.in {
			if ctx.Err() != nil {
				continue // drain: the final pass packs what is left
			}
			t := time.Now()
			n, err := st.PackInterval(ctx, run, i)
			if err != nil && ctx.Err() == nil {
				log.Warn("packing a working set", "run", run, "interval", i, "err", err)
				continue
			}
			log.Debug("packed", "run", run, "interval", i, "frames", n, "took", time.Since(t))
		}
	}()
	return p
}

// offer queues interval i, or drops it when the packer is behind.
func (p *livePacker) offer(i int) {
	select {
	case p.in <- i:
	default:
		p.log.Debug("packer behind; interval left to the final pass", "run", p.run, "interval", i)
	}
}

func (p *livePacker) stop() {
	close(p.in)
	<-p.done
}

// storeLoop commits captures in order, one at a time.
type storeLoop struct {
	r        *recorder
	w        *index.RunWriter
	packer   *livePacker // nil unless Config.PackLive
	ctx      context.Context
	in       chan *capture
	done     chan struct{}
	failed   chan struct{}
	inflight atomic.Int32

	mu struct {
		sync.Mutex
		err       error
		committed int
		downtimes []time.Duration
		bytes     uint64
		devBytes  uint64
		lagging   int
	}
}

func (s *storeLoop) run() {
	defer close(s.done)
	for c := range s.in {
		if s.err() == nil {
			if err := s.commit(c); err != nil {
				s.mu.Lock()
				s.mu.err = err
				s.mu.Unlock()
				close(s.failed)
			}
		}
		s.r.pool.put(c.chunks())
		s.inflight.Add(-1)
	}
}

func (s *storeLoop) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.err
}

func (s *storeLoop) commit(c *capture) error {
	t := time.Now()
	if err := c.each(s.w.Put); err != nil {
		return fmt.Errorf("storing checkpoint %d: %w", c.stats.Checkpoint, err)
	}
	info := index.CommitInfo{DeviceState: c.dev, Downtime: c.stats.Downtime}
	if det := s.r.det; det != nil {
		if err := c.addRestoreSet(); err != nil {
			return err
		}
		icount := c.icount
		info.ICount = &icount
		var err error
		if info.ReplayLog, err = det.log.next(); err != nil {
			return fmt.Errorf("checkpoint %d: %w", c.stats.Checkpoint, err)
		}
	}
	if c.hasWS {
		c.stats.WorkingSet = spansBitmap(c.ws)
	}
	info.WorkingSet = c.stats.WorkingSet
	dirty := s.w.Dirty()
	ist, err := s.w.Commit(s.ctx, info)
	if err != nil {
		return fmt.Errorf("committing checkpoint %d: %w", c.stats.Checkpoint, err)
	}
	cs := c.stats
	cs.CheckpointStats = ist
	cs.Dirty = dirty
	cs.StoreTime = time.Since(t)
	if s.packer != nil && c.hasWS {
		s.packer.offer(ist.Checkpoint - 1)
	}
	s.mu.Lock()
	s.mu.committed++
	s.mu.downtimes = append(s.mu.downtimes, cs.Downtime)
	s.mu.bytes += ist.BytesStored
	s.mu.devBytes += ist.DeviceStateBytes
	if cs.Lagging {
		s.mu.lagging++
	}
	s.mu.Unlock()
	s.r.metrics.observe(cs)
	s.r.cfg.Logger.Debug("checkpoint", "run", s.r.cfg.Run, "i", ist.Checkpoint, "downtime", cs.Downtime, "vm_downtime", cs.VMDowntime,
		"present", cs.Present, "changed", ist.ChangedFrames, "new", ist.NewFrames, "store", cs.StoreTime)
	if s.r.cfg.OnCheckpoint != nil {
		s.r.cfg.OnCheckpoint(cs)
	}
	return nil
}

func (r *recorder) loop(ctx context.Context, st *index.Store, w *index.RunWriter) (Summary, error) {
	cfg := r.cfg
	s := &storeLoop{r: r, w: w, ctx: context.WithoutCancel(ctx), in: make(chan *capture, 1),
		done: make(chan struct{}), failed: make(chan struct{})}
	if cfg.PackLive {
		s.packer = startLivePacker(ctx, st, cfg.Run, cfg.Logger)
	}
	go s.run()

	start := time.Now()
	next := start
	stopped := ""
	var loopErr error
loop:
	for i := 0; ; i++ {
		if cfg.Count > 0 && i >= cfg.Count {
			stopped = "count"
			break
		}
		if i > 0 && cfg.Duration > 0 && next.Sub(start) > cfg.Duration {
			stopped = "duration"
			break
		}
		timer := time.NewTimer(time.Until(next))
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			stopped = "canceled"
			break loop
		case <-r.qmp.Done():
			timer.Stop()
			loopErr = fmt.Errorf("%w after %d checkpoints: %v", ErrVMGone, i, r.qmp.Err())
			break loop
		case <-s.failed:
			timer.Stop()
			break loop
		}
		lagging := s.inflight.Load() > 0
		if lagging {
			cfg.Logger.Warn("the store falls behind: the previous checkpoint is not committed yet", "run", cfg.Run, "checkpoint", i)
		}
		c, err := r.take(ctx, i)
		if c != nil && r.det != nil {
			c.restoreTrial = r.det.startTrial(ctx, i, c.dev)
		}
		if c != nil {
			c.stats.Lagging = lagging
			s.inflight.Add(1)
			select {
			case s.in <- c:
			case <-s.failed:
				r.pool.put(c.chunks())
				s.inflight.Add(-1)
			}
		}
		if err != nil {
			if errors.Is(err, qmp.ErrClosed) {
				err = fmt.Errorf("%w at checkpoint %d: %v", ErrVMGone, i, err)
			}
			loopErr = err
			break
		}
		next = time.Now().Add(cfg.Interval)
		if c != nil && c.stats.Downtime > cfg.Interval {
			cfg.Logger.Warn("the pause took longer than the interval", "run", cfg.Run, "checkpoint", i, "downtime", c.stats.Downtime)
		}
	}
	close(s.in)
	<-s.done
	if s.packer != nil {
		s.packer.stop()
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	sum := Summary{Run: cfg.Run, RAMSize: r.m.size, Tracker: cfg.Tracker, Checkpoints: s.mu.committed,
		Stopped: stopped, Elapsed: time.Since(start), BytesStored: s.mu.bytes, DeviceStateBytes: s.mu.devBytes,
		Lagging: s.mu.lagging}
	sum.MedianDowntime, sum.P99Downtime, sum.MaxDowntime = downtimeStats(s.mu.downtimes)
	if s.mu.err != nil {
		loopErr = errors.Join(s.mu.err, loopErr)
	}
	if loopErr != nil {
		sum.Stopped = "error"
		cfg.Logger.Error("recording failed", "run", cfg.Run, "checkpoints", sum.Checkpoints, "err", loopErr)
		return sum, loopErr
	}
	if sum.Checkpoints == 0 {
		return sum, fmt.Errorf("kvmrec: canceled before checkpoint 0: %w", context.Cause(ctx))
	}
	cfg.Logger.Info("recording done", "run", cfg.Run, "checkpoints", sum.Checkpoints, "stopped", sum.Stopped,
		"median_downtime", sum.MedianDowntime, "p99_downtime", sum.P99Downtime)
	return sum, nil
}

// downtimeStats returns the median, 99th percentile (nearest rank) and
// maximum of ds.
func downtimeStats(ds []time.Duration) (median, p99, maxd time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	return durations.Median(ds), durations.Quantile(ds, 0.99), slices.Max(ds)
}
