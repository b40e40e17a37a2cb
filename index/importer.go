package index

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index/rawfmt"
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

// ImportStreamSpec describes an import from one stream: Count raw RAM
// images of RAMSize bytes each, back to back (the store socket's import).
type ImportStreamSpec struct {
	Run     string
	RAMSize uint64
	Count   int
	// WorkingSets, when set, holds W_i for i < Count-1.
	WorkingSets []*roaring.Bitmap
	Body        io.Reader
	Progress    Progress
}

// Import reads raw RAM images into a new run. All input is checked before
// anything is written. If ctx is cancelled, the checkpoints committed so far
// stay (the run is visible once checkpoint 0 is) and the error says how far
// it got.
func (s *Store) Import(ctx context.Context, spec ImportSpec) (RunInfo, error) {
	if err := s.checkNewRun(spec.Run, len(spec.Dumps)); err != nil {
		return RunInfo{}, err
	}
	size, err := CheckDumps(spec.Dumps)
	if err != nil {
		return RunInfo{}, err
	}
	var wss []*roaring.Bitmap
	if spec.WSDir != "" {
		if wss, err = ReadWorkingSets(spec.WSDir, len(spec.Dumps)-1, uint64(size)/PageSize); err != nil {
			return RunInfo{}, err
		}
	}
	buf := make([]byte, 4<<20)
	return s.importDumps(ctx, spec.Run, uint64(size), wss, spec.Dumps, spec.Progress, func(i int, fn func(uint64, []byte) error, progress func(uint64)) error {
		return readDumpFile(ctx, spec.Dumps[i], size, buf, fn, progress)
	})
}

// ImportStream is Import from one stream. The sizes and working sets are
// checked before anything is written; a stream that ends early keeps the
// checkpoints committed before (as a cancelled Import does).
func (s *Store) ImportStream(ctx context.Context, spec ImportStreamSpec) (RunInfo, error) {
	if err := s.checkNewRun(spec.Run, spec.Count); err != nil {
		return RunInfo{}, err
	}
	if spec.RAMSize == 0 || spec.RAMSize%PageSize != 0 {
		return RunInfo{}, fmt.Errorf("%w: RAM size %d is not a positive multiple of %d", ErrBadInput, spec.RAMSize, PageSize)
	}
	if spec.WorkingSets != nil && len(spec.WorkingSets) != spec.Count-1 {
		return RunInfo{}, fmt.Errorf("%w: %d working sets for %d dumps (want %d)", ErrBadInput, len(spec.WorkingSets), spec.Count, spec.Count-1)
	}
	frames := spec.RAMSize / PageSize
	for i, ws := range spec.WorkingSets {
		if !ws.IsEmpty() && uint64(ws.Maximum()) >= frames {
			return RunInfo{}, fmt.Errorf("%w: working set %d names frames beyond the RAM's %d", ErrBadInput, i, frames)
		}
	}
	names := make([]string, spec.Count)
	for i := range names {
		names[i] = "dump " + strconv.Itoa(i)
	}
	buf := make([]byte, 4<<20)
	return s.importDumps(ctx, spec.Run, spec.RAMSize, spec.WorkingSets, names, spec.Progress, func(i int, fn func(uint64, []byte) error, progress func(uint64)) error {
		n, err := rawfmt.ReadDump(ctx, io.LimitReader(spec.Body, int64(spec.RAMSize)), buf, fn, progress)
		if err == nil && n != spec.RAMSize {
			err = fmt.Errorf("%w: the stream ended after %d of its %d bytes", ErrBadInput, n, spec.RAMSize)
		}
		return err
	})
}

// checkNewRun checks a new run's name and that it does not exist.
func (s *Store) checkNewRun(name string, dumps int) error {
	if err := ValidRunName(name); err != nil {
		return err
	}
	if dumps <= 0 {
		return fmt.Errorf("%w: no dumps to import", ErrBadInput)
	}
	if _, err := s.Run(name); err == nil {
		return fmt.Errorf("%w: %q", ErrRunExists, name)
	} else if !errors.Is(err, ErrRunNotFound) {
		return err
	}
	return nil
}

// CheckDumps checks that the files are regular, of one size and a positive
// multiple of PageSize; it returns the size.
func CheckDumps(dumps []string) (int64, error) {
	var size int64 = -1
	for _, d := range dumps {
		fi, err := os.Stat(d)
		if err != nil {
			return 0, fmt.Errorf("%w: dump %v", ErrBadInput, err)
		}
		if !fi.Mode().IsRegular() {
			return 0, fmt.Errorf("%w: dump %s is not a regular file", ErrBadInput, d)
		}
		if fi.Size() == 0 || fi.Size()%PageSize != 0 {
			return 0, fmt.Errorf("%w: dump %s has %d bytes, not a positive multiple of %d", ErrBadInput, d, fi.Size(), PageSize)
		}
		if size >= 0 && fi.Size() != size {
			return 0, fmt.Errorf("%w: dump %s has %d bytes, but %s has %d", ErrBadInput, d, fi.Size(), dumps[0], size)
		}
		size = fi.Size()
	}
	return size, nil
}

// ReadWorkingSets reads DIR/<i>.ws (list format) for i < n.
func ReadWorkingSets(dir string, n int, frames uint64) ([]*roaring.Bitmap, error) {
	var wss []*roaring.Bitmap
	for i := 0; i < n; i++ {
		p := filepath.Join(dir, strconv.Itoa(i)+".ws")
		data, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%w: working set: %v", ErrBadInput, err)
		}
		bm, err := ParseList(data, frames)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", p, err)
		}
		wss = append(wss, bm)
	}
	return wss, nil
}

// importDumps writes the checked dumps as checkpoints 0..len(names)-1 of a
// new run; read(i, ...) streams dump i.
func (s *Store) importDumps(ctx context.Context, run string, size uint64, wss []*roaring.Bitmap, names []string, progress Progress,
	read func(i int, fn func(uint64, []byte) error, progress func(uint64)) error) (RunInfo, error) {
	tracker := "none"
	if wss != nil {
		tracker = "import"
	}
	w, err := s.CreateRun(RunSpec{Name: run, RAMSize: size, Recorder: "import", Tracker: tracker})
	if err != nil {
		return RunInfo{}, err
	}
	defer w.Close()
	total := size * uint64(len(names))
	for i, d := range names {
		base := uint64(i) * size
		err := read(i, func(pfn uint64, frame []byte) error {
			return w.Put(pfn, frame)
		}, func(done uint64) {
			if progress != nil {
				progress(base+done, total)
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
			return RunInfo{}, fmt.Errorf("importing %s: %w (checkpoints 0..%d of %q are committed)", d, err, i-1, run)
		}
	}
	return s.Run(run)
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
