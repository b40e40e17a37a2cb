package kvmrec

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/replaypos"
)

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

// logReachLimit bounds the wait of a commit for QEMU's replay log: half an
// interval, at most 1 s, so that commits keep up with the pauses.
func logReachLimit(interval time.Duration) time.Duration {
	return min(interval/2, time.Second)
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
		// The interval that ends here is replayable once its log is
		// stored: wait (briefly) for QEMU to write it.
		if pos, err := replaypos.Parse(c.dev); err == nil && !det.log.reach(s.ctx, pos.LogOffset, logReachLimit(s.r.cfg.Interval)) {
			s.r.cfg.Logger.Info("the replay log is stored short of the checkpoint's position; the interval before it becomes replayable with the next checkpoint",
				"checkpoint", c.stats.Checkpoint, "position", pos.LogOffset)
		}
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
