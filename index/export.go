package index

import (
	"context"
	"fmt"
	"os"

	"github.com/RoaringBitmap/roaring/v2"
)

// ExportSpec describes an export of one checkpoint as a raw image.
type ExportSpec struct {
	Run      string
	Interval int
	// Sparse writes only W_i as data; otherwise every non-zero frame is.
	Sparse   bool
	Out      string
	Progress Progress
}

// Export writes checkpoint i of a run to a file of the RAM size. Frames that
// are not data are left as holes (they read as zeros).
func (s *Store) Export(ctx context.Context, spec ExportSpec) error {
	c, err := s.OpenCheckpoint(spec.Run, spec.Interval)
	if err != nil {
		return err
	}
	defer c.Close()
	var frames *roaring.Bitmap
	if spec.Sparse {
		if frames, err = s.WorkingSet(spec.Run, spec.Interval); err != nil {
			return err
		}
	} else if frames, err = c.DataFrames(); err != nil {
		return err
	}
	f, err := os.OpenFile(spec.Out, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	if err := c.export(ctx, f, frames, spec.Progress); err != nil {
		f.Close()
		os.Remove(spec.Out)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", spec.Out, err)
	}
	return f.Close()
}

func (c *Checkpoint) export(ctx context.Context, f *os.File, frames *roaring.Bitmap, progress Progress) error {
	if err := f.Truncate(int64(c.Size())); err != nil {
		return fmt.Errorf("writing %s: %w", f.Name(), err)
	}
	// Coalesce frames that are adjacent both in read order and in the file
	// into one write.
	const maxRun = 1 << 20
	run := make([]byte, 0, maxRun)
	var runStart uint64
	total := frames.GetCardinality() * PageSize
	var done uint64
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		if _, err := f.WriteAt(run, int64(runStart*PageSize)); err != nil {
			return fmt.Errorf("writing %s: %w", f.Name(), err)
		}
		done += uint64(len(run))
		if progress != nil {
			progress(done, total)
		}
		run = run[:0]
		return ctx.Err()
	}
	err := c.forEachFrame(frames, func(pfn uint64, data []byte) error {
		if len(run) > 0 && (pfn != runStart+uint64(len(run)/PageSize) || len(run) == maxRun) {
			if err := flush(); err != nil {
				return err
			}
		}
		if len(run) == 0 {
			runStart = pfn
		}
		run = append(run, data...)
		return nil
	})
	if err != nil {
		return err
	}
	return flush()
}
