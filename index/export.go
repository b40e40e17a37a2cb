package index

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync/atomic"

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
	c, frames, err := s.exportFrames(spec)
	if err != nil {
		return err
	}
	defer c.Close()
	f, err := os.OpenFile(spec.Out, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	regular := false
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		regular = true
		if err := f.Truncate(0); err != nil {
			f.Close()
			return fmt.Errorf("writing %s: %w", spec.Out, err)
		}
	}
	if err := c.export(ctx, f, frames, spec.Progress); err != nil {
		f.Close()
		if regular {
			os.Remove(spec.Out)
		}
		return err
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", spec.Out, err)
	}
	return nil
}

// ExportTo writes the data frames of checkpoint spec.Interval (W_i when
// spec.Sparse) to w at their offsets, in no particular order and from
// several goroutines, one WriteAt at a time each; spec.Out is not used. It
// returns the RAM size. Offsets not written are holes.
func (s *Store) ExportTo(ctx context.Context, spec ExportSpec, w io.WriterAt) (uint64, error) {
	c, frames, err := s.exportFrames(spec)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	return c.Size(), c.writeFrames(ctx, w, "the export stream", frames, spec.Progress)
}

// exportFrames opens the checkpoint of spec and finds the frames an export
// writes.
func (s *Store) exportFrames(spec ExportSpec) (*Checkpoint, *roaring.Bitmap, error) {
	c, err := s.OpenCheckpoint(spec.Run, spec.Interval)
	if err != nil {
		return nil, nil, err
	}
	var frames *roaring.Bitmap
	if spec.Sparse {
		frames, err = s.WorkingSet(spec.Run, spec.Interval)
	} else {
		frames, err = c.DataFrames()
	}
	if err != nil {
		c.Close()
		return nil, nil, err
	}
	return c, frames, nil
}

func (c *Checkpoint) export(ctx context.Context, f *os.File, frames *roaring.Bitmap, progress Progress) error {
	// A regular file gets the RAM size with holes; a device (/dev/null, a
	// block device) is written as it is.
	if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
		if err := f.Truncate(int64(c.Size())); err != nil {
			return fmt.Errorf("writing %s: %w", f.Name(), err)
		}
	}
	return c.writeFrames(ctx, f, f.Name(), frames, progress)
}

// writeFrames writes frames to f at their offsets.
func (c *Checkpoint) writeFrames(ctx context.Context, f io.WriterAt, name string, frames *roaring.Bitmap, progress Progress) error {
	// Each worker coalesces frames that are adjacent both in its read order
	// and in the file into one write of up to 1 MiB.
	const maxRun = 1 << 20
	type runBuf struct {
		data  []byte
		start uint64
	}
	// Twice the cores: cold reads wait on the disk, and a waiting worker
	// leaves its core to another.
	workers := 2 * runtime.GOMAXPROCS(0)
	runs := make([]runBuf, workers)
	for i := range runs {
		runs[i].data = make([]byte, 0, maxRun)
	}
	total := frames.GetCardinality() * PageSize
	var done atomic.Uint64
	flush := func(r *runBuf) error {
		if len(r.data) == 0 {
			return nil
		}
		if _, err := f.WriteAt(r.data, int64(r.start*PageSize)); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
		n := done.Add(uint64(len(r.data)))
		if progress != nil {
			progress(n, total)
		}
		r.data = r.data[:0]
		return nil
	}
	err := c.forEachFrame(ctx, frames, workers, func(w int, pfn uint64, data []byte) error {
		r := &runs[w]
		if len(r.data) > 0 && (pfn != r.start+uint64(len(r.data)/PageSize) || len(r.data) == maxRun) {
			if err := flush(r); err != nil {
				return err
			}
		}
		if len(r.data) == 0 {
			r.start = pfn
		}
		r.data = append(r.data, data...)
		return nil
	})
	if err != nil {
		return err
	}
	for i := range runs {
		if err := flush(&runs[i]); err != nil {
			return err
		}
	}
	return nil
}
