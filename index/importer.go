package index

import (
	"context"
	"errors"
	"fmt"
	"github.com/ckptfs/ckptfs/index/rawfmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/RoaringBitmap/roaring/v2"
)

// Progress is called with bytes done and bytes in all; it may be nil.
type Progress func(done, total uint64)

// ImportSpec describes an import of raw RAM images as checkpoints 0..n.
type ImportSpec struct {
	Run   string
	Dumps []string // DUMP0..DUMPn, all the same size, a multiple of PageSize
	// WSDir, when set, holds <i>.ws (list format) with W_i for i < n.
	WSDir    string
	Progress Progress
}

// Import reads raw RAM images into a new run. All input is checked before
// anything is written. If ctx is cancelled, the checkpoints committed so far
// stay (the run is visible once checkpoint 0 is) and the error says how far
// it got.
func (s *Store) Import(ctx context.Context, spec ImportSpec) (RunInfo, error) {
	if err := ValidRunName(spec.Run); err != nil {
		return RunInfo{}, err
	}
	if len(spec.Dumps) == 0 {
		return RunInfo{}, fmt.Errorf("%w: no dumps to import", ErrBadInput)
	}
	if _, err := s.Run(spec.Run); err == nil {
		return RunInfo{}, fmt.Errorf("%w: %q", ErrRunExists, spec.Run)
	} else if !errors.Is(err, ErrRunNotFound) {
		return RunInfo{}, err
	}
	var size int64 = -1
	for _, d := range spec.Dumps {
		fi, err := os.Stat(d)
		if err != nil {
			return RunInfo{}, fmt.Errorf("%w: dump %v", ErrBadInput, err)
		}
		if !fi.Mode().IsRegular() {
			return RunInfo{}, fmt.Errorf("%w: dump %s is not a regular file", ErrBadInput, d)
		}
		if fi.Size() == 0 || fi.Size()%PageSize != 0 {
			return RunInfo{}, fmt.Errorf("%w: dump %s has %d bytes, not a positive multiple of %d", ErrBadInput, d, fi.Size(), PageSize)
		}
		if size >= 0 && fi.Size() != size {
			return RunInfo{}, fmt.Errorf("%w: dump %s has %d bytes, but %s has %d", ErrBadInput, d, fi.Size(), spec.Dumps[0], size)
		}
		size = fi.Size()
	}
	frames := uint64(size) / PageSize
	var wss []*roaring.Bitmap
	if spec.WSDir != "" {
		for i := 0; i < len(spec.Dumps)-1; i++ {
			p := filepath.Join(spec.WSDir, strconv.Itoa(i)+".ws")
			data, err := os.ReadFile(p)
			if err != nil {
				return RunInfo{}, fmt.Errorf("%w: working set: %v", ErrBadInput, err)
			}
			bm, err := ParseList(data, frames)
			if err != nil {
				return RunInfo{}, fmt.Errorf("%s: %w", p, err)
			}
			wss = append(wss, bm)
		}
	}
	tracker := "none"
	if wss != nil {
		tracker = "import"
	}
	w, err := s.CreateRun(RunSpec{Name: spec.Run, RAMSize: uint64(size), Recorder: "import", Tracker: tracker})
	if err != nil {
		return RunInfo{}, err
	}
	defer w.Close()
	total := uint64(size) * uint64(len(spec.Dumps))
	buf := make([]byte, 4<<20)
	for i, d := range spec.Dumps {
		base := uint64(i) * uint64(size)
		err := readDumpFile(ctx, d, size, buf, func(pfn uint64, frame []byte) error {
			return w.Put(pfn, frame)
		}, func(done uint64) {
			if spec.Progress != nil {
				spec.Progress(base+done, total)
			}
		})
		if err == nil {
			info := CommitInfo{}
			if i > 0 && wss != nil {
				info.WorkingSet = wss[i-1]
			}
			_, err = w.Commit(ctx, info)
		}
		if err != nil {
			if i == 0 {
				return RunInfo{}, fmt.Errorf("importing %s: %w", d, err)
			}
			return RunInfo{}, fmt.Errorf("importing %s: %w (checkpoints 0..%d of %q are committed)", d, err, i-1, spec.Run)
		}
	}
	return s.Run(spec.Run)
}

// readDumpFile streams a raw RAM image frame by frame. It fails if the file
// is not exactly size bytes long when read, e.g. truncated meanwhile.
func readDumpFile(ctx context.Context, path string, size int64, buf []byte, fn func(pfn uint64, frame []byte) error, progress func(uint64)) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadInput, err)
	}
	defer f.Close()
	n, err := rawfmt.ReadDump(ctx, f, buf, fn, progress)
	if err != nil {
		return err
	}
	if int64(n) != size {
		return fmt.Errorf("%w: dump %s changed size while reading (%d bytes read, %d expected)", ErrBadInput, path, n, size)
	}
	return nil
}
