package kvmrec

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/durations"
	"github.com/ckptfs/ckptfs/internal/qmp"
)

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
	spec := index.RunSpec{Name: cfg.Run, RAMSize: r.m.size, Recorder: recorderName, Tracker: cfg.Tracker, Meta: meta}
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
