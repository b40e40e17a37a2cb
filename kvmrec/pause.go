package kvmrec

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"golang.org/x/sys/unix"
)

// take pauses the VM and captures checkpoint i. Once `stop` succeeded, the
// VM is always resumed before take returns. A capture is returned whenever
// it is complete, even if resuming failed afterwards.
func (r *recorder) take(ctx context.Context, i int) (c *capture, err error) {
	// The pause must finish even when ctx is canceled (Ctrl-C): the
	// checkpoint in progress completes and the VM runs on.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PauseTimeout)
	defer cancel()
	late, err := r.waitLate()
	if err != nil {
		return nil, err
	}
	if err := r.reserve(i); err != nil {
		return nil, err
	}
	var zeroed []span
	if i > 0 && r.cfg.Tracker == TrackerPagemap {
		if zeroed, err = r.punched(i); err != nil {
			return nil, err
		}
	}
	if i == 0 && r.cfg.Tracker == TrackerPagemap {
		if r.blocksBefore, err = r.fileBlocks(); err != nil {
			return nil, err
		}
		// Nothing has been recorded yet, so the VMM's page table can be
		// emptied while the VM runs: the pause then unmaps only what
		// was touched since.
		if err := r.prepass(); err != nil {
			return nil, err
		}
	}
	c = &capture{}
	c.stats.Checkpoint = i
	c.stats.DeferredUnmap = late.took
	if r.cfg.Tracker == TrackerPagemap && !r.cfg.NoPrecopy {
		if err := r.precopy(c, i); err != nil {
			r.pool.put(c.chunks())
			return nil, fmt.Errorf("checkpoint %d: %w", i, err)
		}
	}
	// Events of earlier pauses must not be taken for this one's.
	r.qmp.DiscardEvents("STOP")
	r.qmp.DiscardEvents("RESUME")
	t0 := time.Now()
	if err := r.qmp.Execute(pctx, "stop", nil, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) && !errors.Is(err, qmp.ErrClosed) {
			r.resume(ctx) // no answer: the VM may be stopped
		}
		return nil, fmt.Errorf("stopping the VM for checkpoint %d: %w", i, err)
	}
	c.stats.Phases.Stop = time.Since(t0)
	complete := false
	defer func() {
		tc := time.Now()
		cerr := r.resume(ctx)
		c.stats.Phases.Cont = time.Since(tc)
		c.stats.Downtime = time.Since(t0)
		if cerr == nil {
			c.stats.VMDowntime = r.vmDowntime(ctx)
		}
		if !complete {
			r.pool.put(c.chunks())
			c = nil
		} else if cerr == nil {
			r.startLate()
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("resuming the VM after checkpoint %d: %w", i, cerr))
		}
	}()

	if r.det != nil {
		var regs string
		if c.stats.BoundaryRetries, regs, err = r.settleBoundary(pctx, i); err != nil {
			return c, err
		}
		if c.icount, err = r.queryICount(pctx); err != nil {
			return c, fmt.Errorf("checkpoint %d: %w", i, err)
		}
		if c.dev, err = r.saveReplayDeviceState(pctx, r.det.dir, i); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		c.exec = r.det.exec.take()
		tables, err := r.pageTableSpans(regs)
		if err != nil {
			return c, fmt.Errorf("checkpoint %d: %w", i, err)
		}
		r.cfg.Logger.Debug("translation cache", "checkpoint", i, "blocks_translated", r.det.exec.translated(),
			"flushes", r.det.exec.flushed(), "frames_executed", spanFrames(c.exec), "page_tables", spanFrames(tables))
		c.exec = unionSpans(c.exec, tables)
		if err := r.requestTranslationFlush(pctx); err != nil {
			return c, fmt.Errorf("checkpoint %d: %w", i, err)
		}
	}
	var dev *deviceSave
	if r.cfg.DeviceState {
		if dev, err = r.startDeviceSave(pctx); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		defer dev.abort()
	}
	if err := r.capture(i, c, zeroed); err != nil {
		return c, fmt.Errorf("checkpoint %d: %w", i, err)
	}
	if c.hasWS {
		c.ws = unionSpans(c.ws, c.exec)
	}
	if dev != nil {
		td := time.Now()
		if c.dev, err = dev.wait(pctx); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		c.stats.Phases.Device = time.Since(td)
	}
	complete = true
	return c, nil
}

// vmDowntime is the time between the VMM's STOP and RESUME events of the
// pause that just ended, or 0. A VMM sends each event before its reply to
// stop and cont, so both are queued by now; the wait is only a bound.
func (r *recorder) vmDowntime(ctx context.Context) time.Duration {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Millisecond)
	defer cancel()
	stop, err := r.qmp.WaitEvent(wctx, "STOP")
	if err != nil {
		return 0
	}
	resume, err := r.qmp.WaitEvent(wctx, "RESUME")
	if err != nil || stop.Time.IsZero() || !resume.Time.After(stop.Time) {
		return 0
	}
	return resume.Time.Sub(stop.Time)
}

// resume sends cont with its own deadline, whatever happened to ctx.
func (r *recorder) resume(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return r.qmp.Execute(cctx, "cont", nil, nil)
}

// reserve prepares staging chunks before the pause so that the copy does
// not fault: all allocated frames for checkpoint 0, else what the last
// checkpoint used plus a quarter. Checkpoint 0 holds the whole RAM and says
// little about an interval, so checkpoint 1 starts from a quarter of it;
// chunks it needs beyond that are mapped when it copies (mostly in the
// pre-copy, with the VM running). Reserving checkpoint 0's size again
// would populate memory of the RAM's size while the store still writes
// checkpoint 0, taking CPU from it.
func (r *recorder) reserve(i int) error {
	need := r.lastUse + r.lastUse/4 + 1
	if i == 1 {
		need = r.lastUse/4 + 1
	}
	if i == 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(r.ram.Fd()), &st); err != nil {
			return fmt.Errorf("stat of the RAM file: %w", err)
		}
		frames := min(uint64(st.Blocks)*512/pageSize, r.frames)
		need = int(frames/chunkFrames) + 1
		return r.pool.reserve(need, 0)
	}
	// Keep enough for the capture being stored and the next one.
	return r.pool.reserve(need, 3*need)
}

// capture does the work of a pause: find the candidate frames, hash them
// and copy the changed ones, and unmap present frames in the VMM. In exact
// mode and for checkpoint 0 all present frames are unmapped, concurrently
// with the scan. Else the scan hands the present frames that did not change
// to a concurrent pageout as it goes, and keeps the changed ones for
// startLate. After a pre-copy the candidates are only what the VM touched
// since it, and settlePrecopy reconciles the two copies.
func (r *recorder) capture(i int, c *capture, zeroed []span) error {
	var cands, present []span
	pageoutDone := make(chan error, 1)
	var cls *classifier
	if r.cfg.Tracker == TrackerPagemap {
		t := time.Now()
		var err error
		if present, err = r.readPagemap(); err != nil {
			return err
		}
		c.stats.Phases.Pagemap = time.Since(t)
		c.stats.Present = spanFrames(present)
		if i > 0 {
			// The bitmap is built by the store goroutine, after the pause.
			cands = unionSpans(present, r.late)
			c.ws = unionSpans(cands, c.preWS)
			c.hasWS = true
		}
		if i == 0 || r.cfg.ExactWorkingSets {
			go func() {
				t := time.Now()
				err := r.pageout(present, pageoutGap)
				c.stats.Phases.Pageout = time.Since(t)
				pageoutDone <- err
			}()
		} else {
			cls = r.newClassifier(present)
			go func() {
				t := time.Now()
				var first error
				for spans := range cls.out {
					// Once the scan is done, what is left is not worth
					// a longer pause: it is unmapped after cont.
					if cls.cutoff.Load() {
						cls.leftover = append(cls.leftover, spans...)
						continue
					}
					if err := r.pageout(spans, 0); err != nil && first == nil {
						first = err
					}
				}
				c.stats.Phases.Pageout = time.Since(t)
				pageoutDone <- first
			}()
		}
	} else {
		pageoutDone <- nil
	}
	t := time.Now()
	var serr error
	switch {
	case i == 0 && c.precopiedAll:
		// What the VM wrote since the pre-copy read everything.
		cands = present
	case i == 0:
		cands, serr = dataSpans(r.ram, r.frames)
	case r.cfg.Tracker == TrackerHash:
		cands = []span{{0, r.frames}}
	default:
		cands = unionSpans(cands, zeroed)
	}
	if serr == nil {
		var parts []*staging
		parts, serr = r.scanAll(cands, cls, false)
		c.parts = append(c.parts, parts...)
		c.stats.Scanned = spanFrames(cands)
		c.stats.Copied = uint64(framesIn(parts))
	}
	if cls != nil {
		cls.cutoff.Store(true)
		cls.finish()
	}
	c.stats.Phases.Scan = time.Since(t)
	perr := <-pageoutDone
	if serr != nil {
		return serr
	}
	if perr != nil {
		return perr
	}
	r.late = nil
	c.settlePrecopy(cands, r.hashes)
	if cls != nil {
		r.late = unionSpans(cls.late, cls.presentIn(cls.leftover))
		c.stats.Deferred = spanFrames(r.late)
	}
	r.lastUse = len(c.chunks())
	return nil
}
