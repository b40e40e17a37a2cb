package fs

import (
	"bytes"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ckptfs/ckptfs/index"
)

// memSource is an in-memory Source for tests: checkpoints are whole images,
// and frames can be marked corrupt to see how the mount reports them.
type memSource struct {
	mu   sync.Mutex
	runs map[string]*memRun
	gen  atomic.Uint64
	ids  index.RunID
}

type memRun struct {
	info    index.RunInfo
	images  [][]byte
	ws      []*roaring.Bitmap
	dev     [][]byte
	corrupt map[[2]uint64]bool // (checkpoint, pfn)

	// A deterministic run (setReplay, appendLog).
	icount      []uint64
	hasLog      bool
	log         []byte
	logComplete bool
	logTime     time.Time
}

func newMemSource() *memSource { return &memSource{runs: map[string]*memRun{}} }

// add adds a run with the given checkpoints and working sets (len(ws) <=
// len(images)).
func (s *memSource) add(name string, images [][]byte, ws []*roaring.Bitmap, dev [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ids++
	size := uint64(len(images[0]))
	s.runs[name] = &memRun{
		info: index.RunInfo{RunRecord: index.RunRecord{Name: name, RAMSize: size, PageSize: pageSize,
			Recorder: "test", Tracker: "test", Created: time.Unix(1700000000, 0)},
			ID: s.ids, Frames: size / pageSize, Checkpoints: len(images), Intervals: len(ws)},
		images: images, ws: ws, dev: dev, corrupt: map[[2]uint64]bool{},
	}
	s.gen.Add(1)
}

func (s *memSource) corrupt(name string, i int, pfn uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs[name].corrupt[[2]uint64{uint64(i), pfn}] = true
}

func (s *memSource) remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.runs, name)
	s.gen.Add(1)
}

func (s *memSource) Generation() uint64 { return s.gen.Load() }

func (s *memSource) run(name string) (*memRun, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[name]
	if r == nil {
		return nil, fmt.Errorf("%w: %q", index.ErrRunNotFound, name)
	}
	return r, nil
}

func (s *memSource) Runs() ([]index.RunInfo, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []index.RunInfo
	for _, r := range s.runs {
		out = append(out, r.info)
	}
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j].Name < out[j-1].Name; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out, nil
}

func (s *memSource) Run(name string) (index.RunInfo, error) {
	r, err := s.run(name)
	if err != nil {
		return index.RunInfo{}, err
	}
	return r.info, nil
}

func (s *memSource) OpenCheckpoint(name string, i int) (Frames, error) {
	r, err := s.run(name)
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= len(r.images) {
		return nil, fmt.Errorf("%w: %d", index.ErrCheckpointMissing, i)
	}
	return &memFrames{r: r, i: i, s: s}, nil
}

func (s *memSource) IntervalStats(name string, i int) (index.IntervalStats, error) {
	r, err := s.run(name)
	if err != nil {
		return index.IntervalStats{}, err
	}
	if i < 0 || i >= len(r.images) {
		return index.IntervalStats{}, fmt.Errorf("%w: %d", index.ErrCheckpointMissing, i)
	}
	st := index.IntervalStats{Interval: i}
	st.Checkpoint.Checkpoint = i
	st.Checkpoint.CommittedAt = time.Unix(1700000000+int64(i), 0)
	if i < len(r.dev) {
		st.Checkpoint.DeviceStateBytes = uint64(len(r.dev[i]))
		st.DeviceStateBytes = st.Checkpoint.DeviceStateBytes
	}
	if i < len(r.ws) {
		st.WorkingSetFrames = r.ws[i].GetCardinality()
	}
	s.mu.Lock()
	if i < len(r.icount) {
		v := r.icount[i]
		st.ICount, st.Checkpoint.ICount = &v, &v
	}
	s.mu.Unlock()
	return st, nil
}

func (s *memSource) DeviceState(name string, i int) ([]byte, error) {
	r, err := s.run(name)
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= len(r.dev) || r.dev[i] == nil {
		return nil, fmt.Errorf("%w: %d", index.ErrNoDeviceState, i)
	}
	return r.dev[i], nil
}

type memFrames struct {
	s *memSource
	r *memRun
	i int

	once sync.Once
	data *roaring.Bitmap
}

func (f *memFrames) Size() uint64 { return uint64(len(f.r.images[f.i])) }

func (f *memFrames) DataFrames() (*roaring.Bitmap, error) {
	f.once.Do(func() {
		f.data = roaring.New()
		img := f.r.images[f.i]
		zero := make([]byte, pageSize)
		for p := 0; p*pageSize < len(img); p++ {
			if !bytes.Equal(img[p*pageSize:(p+1)*pageSize], zero) {
				f.data.Add(uint32(p))
			}
		}
	})
	return f.data, nil
}

func (f *memFrames) ReadFrames(first uint64, dst []byte) error {
	f.s.mu.Lock()
	for p := first; p < first+uint64(len(dst)/pageSize); p++ {
		if f.r.corrupt[[2]uint64{uint64(f.i), p}] {
			f.s.mu.Unlock()
			return fmt.Errorf("%w: frame %d of checkpoint %d: checksum mismatch", index.ErrCorrupt, p, f.i)
		}
	}
	f.s.mu.Unlock()
	img := f.r.images[f.i]
	if (first+uint64(len(dst)/pageSize))*pageSize > uint64(len(img)) {
		return fmt.Errorf("%w: beyond the end", index.ErrBadInput)
	}
	copy(dst, img[first*pageSize:])
	return nil
}

func (f *memFrames) WorkingSet() (*roaring.Bitmap, error) {
	if f.i >= len(f.r.ws) {
		return nil, fmt.Errorf("%w: %d", index.ErrNoWorkingSet, f.i)
	}
	return f.r.ws[f.i], nil
}

func (f *memFrames) ReadWorkingSet(first uint64, dst []byte) (uint64, error) {
	ws, err := f.WorkingSet()
	if err != nil {
		return 0, err
	}
	n := uint64(len(dst) / pageSize)
	holes := n
	for p := first; p < first+n; p++ {
		out := dst[(p-first)*pageSize : (p-first+1)*pageSize]
		if !ws.Contains(uint32(p)) {
			clear(out)
			continue
		}
		if err := f.ReadFrames(p, out); err != nil {
			return 0, err
		}
		holes--
	}
	return holes, nil
}

// WorkingSetPieces cuts at every frames frames of W_i, like the store
// without its block size.
func (f *memFrames) WorkingSetPieces(first, last uint64, frames int) ([]index.Piece, error) {
	ws, err := f.WorkingSet()
	if err != nil {
		return nil, err
	}
	var out []index.Piece
	var cur index.Piece
	it := ws.Iterator()
	for rank := uint64(0); it.HasNext(); rank++ {
		p := uint64(it.Next())
		if p < first || p >= last {
			continue
		}
		if rank%uint64(frames) == 0 && len(cur.Extents) > 0 {
			out, cur = append(out, cur), index.Piece{}
		}
		if k := len(cur.Extents); k > 0 && cur.Extents[k-1].End == p {
			cur.Extents[k-1].End++
		} else {
			cur.Extents = append(cur.Extents, index.Extent{Start: p, End: p + 1})
		}
	}
	if len(cur.Extents) > 0 {
		out = append(out, cur)
	}
	return out, nil
}

func (f *memFrames) ReadPiece(p index.Piece, dst []byte) error {
	off := uint64(0)
	for _, e := range p.Extents {
		n := (e.End - e.Start) * pageSize
		if err := f.ReadFrames(e.Start, dst[off:off+n]); err != nil {
			return err
		}
		off += n
	}
	return nil
}

func (f *memFrames) Close() error { return nil }

// setReplay makes run name deterministic, with the recording's QEMU
// arguments, the instruction count of each checkpoint and an empty log.
func (s *memSource) setReplay(name string, args []string, icount []uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[name]
	r.info.Deterministic, r.info.QEMUArgs = true, args
	r.icount, r.hasLog, r.logTime = icount, true, time.Unix(1700000100, 0)
	s.gen.Add(1)
}

// appendLog appends to the replay log of run name, as a commit would.
func (s *memSource) appendLog(name string, data []byte, complete bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.runs[name]
	r.hasLog = true
	r.log = append(r.log, data...)
	r.logComplete = r.logComplete || complete
	r.logTime = r.logTime.Add(time.Second)
	s.gen.Add(1)
}

func (s *memSource) ReplayLog(name string) (ReplayLog, error) {
	r, err := s.run(name)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !r.hasLog {
		return nil, fmt.Errorf("%w: %q", index.ErrNoReplayLog, name)
	}
	return &memLog{data: r.log[:len(r.log):len(r.log)], complete: r.logComplete, mod: r.logTime}, nil
}

// memLog is a snapshot of a memRun's log.
type memLog struct {
	data     []byte
	complete bool
	mod      time.Time
}

func (l *memLog) Size() int64        { return int64(len(l.data)) }
func (l *memLog) Complete() bool     { return l.complete }
func (l *memLog) ModTime() time.Time { return l.mod }
func (l *memLog) ReadAt(p []byte, off int64) (int, error) {
	return bytes.NewReader(l.data).ReadAt(p, off)
}

var _ Source = (*memSource)(nil)
