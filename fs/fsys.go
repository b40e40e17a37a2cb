package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/singleflight"

	"github.com/ckptfs/ckptfs/index"
)

const pageSize = index.PageSize

// maxIdleCheckpoints is how many checkpoint handles stay open after the
// last file using them was forgotten, so that `ls -l` and repeated opens do
// not rebuild frame maps.
const maxIdleCheckpoints = 16

// maxPrefetches bounds the open prefetches that run at once (each holds a
// few MiB of buffers); more wait for a slot.
const maxPrefetches = 8

// fsys is the state shared by every node of one mount.
type fsys struct {
	src      Source
	log      *slog.Logger
	latency  *prometheus.HistogramVec // READ latency by file kind
	coll     *collector               // nil without a registry
	other    counters                 // failures outside any checkpoint
	lastErr  lastError
	prefetch bool
	uid, gid uint32
	mode     modes
	started  time.Time
	root     *rootNode

	// ctx ends with the mount; prefetch goroutines watch it.
	ctx          context.Context
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	sem          chan struct{} // bounds concurrent open prefetches
	windowSem    chan struct{} // bounds concurrent pushes of readahead windows
	loaders      int           // store readers per prefetch
	storeDir     string        // MountOptions.Store, for .status
	prefetching  atomic.Int64  // pushes running
	pushBufs     chan []byte   // idle push batch buffers (see getPushBuf)
	splitReaders int           // store readers per large READ

	onPrefetched func(time.Duration) // tests: called when an open prefetch ends

	sf singleflight.Group // collapses identical concurrent frame loads

	directReads sync.Map // cancel channels of the direct-I/O READs in flight (see rawFS)

	mu struct {
		sync.Mutex
		ckpts    map[ckptKey]*ckpt
		counters map[ckptKey]*counters
	}
}

// ckptKey names a checkpoint independently of the run's name: a run that is
// removed and recorded again under the same name gets a new ID.
type ckptKey struct {
	run index.RunID
	i   int
}

func newFsys(src Source, opts MountOptions) (*fsys, error) {
	switch opts.Prefetch {
	case "", "ws", "none":
	default:
		return nil, fmt.Errorf("ckptfs: unknown prefetch policy %q (ws, none)", opts.Prefetch)
	}
	f := &fsys{
		src:          src,
		log:          opts.Logger,
		storeDir:     opts.Store,
		pushBufs:     make(chan []byte, 16),
		prefetch:     opts.Prefetch != "none",
		mode:         modesFor(opts.AllowOther),
		started:      time.Now(),
		sem:          make(chan struct{}, maxPrefetches),
		windowSem:    make(chan struct{}, max(1, runtime.GOMAXPROCS(0))),
		loaders:      loadersPerPush(),
		splitReaders: max(1, runtime.GOMAXPROCS(0)),
	}
	if f.log == nil {
		f.log = slog.Default()
	}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	f.mu.ckpts = map[ckptKey]*ckpt{}
	f.mu.counters = map[ckptKey]*counters{}
	if err := f.registerMetrics(opts.Registry); err != nil {
		return nil, fmt.Errorf("ckptfs: registering metrics: %w", err)
	}
	return f, nil
}

// stopPushes cancels running pushes and waits for them; no new ones start.
func (f *fsys) stopPushes() {
	f.mu.Lock()
	f.cancel()
	f.mu.Unlock()
	f.wg.Wait()
}

// close stops pushing and closes every checkpoint handle.
func (f *fsys) close() {
	f.stopPushes()
	if f.coll != nil {
		f.coll.retire(f)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, c := range f.mu.ckpts {
		c.closeFrames()
		delete(f.mu.ckpts, k)
	}
}

// counters returns the counters of checkpoint k.
func (f *fsys) counters(k ckptKey) *counters {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.countersLocked(k)
}

func (f *fsys) countersLocked(k ckptKey) *counters {
	c := f.mu.counters[k]
	if c == nil {
		c = &counters{}
		f.mu.counters[k] = c
	}
	return c
}

// ckpt is a shared, reference-counted handle on one checkpoint with the data
// maps the files need. Committed checkpoints never change, so everything in
// it is computed once.
type ckpt struct {
	key  ckptKey
	run  string
	ctrs *counters

	refs    int       // guarded by fsys.mu
	lastUse time.Time // guarded by fsys.mu

	openOnce sync.Once
	frames   Frames
	openErr  error

	dataOnce sync.Once
	data     extents // non-zero frames
	dataErr  error

	wsMu sync.Mutex            // serialises loads of ws
	ws   atomic.Pointer[wsMap] // W_i, once known
}

// acquire returns the shared handle of checkpoint i of run; release it.
func (f *fsys) acquire(run index.RunInfo, i int) *ckpt {
	k := ckptKey{run.ID, i}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.mu.ckpts[k]
	if c == nil {
		c = &ckpt{key: k, run: run.Name}
		f.mu.ckpts[k] = c
		c.ctrs = f.countersLocked(k)
	}
	c.refs++
	return c
}

func (f *fsys) release(c *ckpt) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c.refs--
	c.lastUse = time.Now()
	f.trimLocked()
}

// trimLocked closes the least recently used idle handles beyond
// maxIdleCheckpoints.
func (f *fsys) trimLocked() {
	var idle []*ckpt
	for _, c := range f.mu.ckpts {
		if c.refs == 0 {
			idle = append(idle, c)
		}
	}
	if len(idle) <= maxIdleCheckpoints {
		return
	}
	sort.Slice(idle, func(a, b int) bool { return idle[a].lastUse.Before(idle[b].lastUse) })
	for _, c := range idle[:len(idle)-maxIdleCheckpoints] {
		delete(f.mu.ckpts, c.key)
		c.closeFrames()
	}
}

func (c *ckpt) closeFrames() {
	if c.frames != nil {
		_ = c.frames.Close()
	}
}

func (f *fsys) openFrames(c *ckpt) (Frames, error) {
	c.openOnce.Do(func() {
		c.frames, c.openErr = f.src.OpenCheckpoint(c.run, c.key.i)
	})
	return c.frames, c.openErr
}

// dataExtents returns the non-zero frames of the checkpoint.
func (f *fsys) dataExtents(c *ckpt) (extents, error) {
	c.dataOnce.Do(func() {
		fr, err := f.openFrames(c)
		if err != nil {
			c.dataErr = err
			return
		}
		bm, err := fr.DataFrames()
		if err != nil {
			c.dataErr = err
			return
		}
		c.data = extentsOf(bm)
	})
	return c.data, c.dataErr
}

// wsMap is W_i as a set and as runs.
type wsMap struct {
	ext extents
	bm  *roaring.Bitmap
}

// wsExtents returns W_i. Only a W_i that was found is kept: a handle can
// be older than its W_i (full/<i>.ram is there first).
func (f *fsys) wsExtents(c *ckpt) (extents, *roaring.Bitmap, error) {
	if m := c.ws.Load(); m != nil {
		return m.ext, m.bm, nil
	}
	c.wsMu.Lock()
	defer c.wsMu.Unlock()
	if m := c.ws.Load(); m != nil {
		return m.ext, m.bm, nil
	}
	fr, err := f.openFrames(c)
	if err != nil {
		return nil, nil, err
	}
	bm, err := fr.WorkingSet()
	if err != nil {
		return nil, nil, err
	}
	m := &wsMap{extentsOf(bm), bm}
	c.ws.Store(m)
	return m.ext, m.bm, nil
}

// readFrames loads frames [first, first+len(dst)/pageSize) of the
// checkpoint. Identical concurrent loads of the same checkpoint (the same
// fault on <i>.ram and full/<i>.ram, or two mounts' files of one interval)
// are collapsed into one store read.
func (f *fsys) readFrames(c *ckpt, first uint64, dst []byte) error {
	fr, err := f.openFrames(c)
	if err != nil {
		return err
	}
	if len(dst) > 64<<10 {
		// Large loads come from readahead of distinct ranges; sharing
		// them would only add a copy. Splitting them keeps several
		// store reads in flight, which is what a cold store needs.
		return readSplit(first, dst, f.splitReaders, fr.ReadFrames)
	}
	key := fmt.Sprintf("%d/%d/%d+%d", c.key.run, c.key.i, first, len(dst))
	v, err, _ := f.sf.Do(key, func() (any, error) {
		buf := make([]byte, len(dst))
		if err := fr.ReadFrames(first, buf); err != nil {
			return nil, err
		}
		return buf, nil
	})
	if err != nil {
		return err
	}
	copy(dst, v.([]byte))
	return nil
}

// readSparse loads frames [first, first+len(dst)/pageSize) of the sparse
// checkpoint (<i>.ram: zeros outside W_i) and returns how many were holes.
// Identical concurrent small loads are collapsed like readFrames's.
func (f *fsys) readSparse(c *ckpt, first uint64, dst []byte) (uint64, error) {
	fr, err := f.openFrames(c)
	if err != nil {
		return 0, err
	}
	if len(dst) > 64<<10 {
		var holes atomic.Uint64
		err := readSplit(first, dst, f.splitReaders, func(pfn uint64, part []byte) error {
			h, err := fr.ReadWorkingSet(pfn, part)
			holes.Add(h)
			return err
		})
		return holes.Load(), err
	}
	type loaded struct {
		buf   []byte
		holes uint64
	}
	key := fmt.Sprintf("ws/%d/%d/%d+%d", c.key.run, c.key.i, first, len(dst))
	v, err, _ := f.sf.Do(key, func() (any, error) {
		buf := make([]byte, len(dst))
		holes, err := fr.ReadWorkingSet(first, buf)
		if err != nil {
			return nil, err
		}
		return loaded{buf, holes}, nil
	})
	if err != nil {
		return 0, err
	}
	l := v.(loaded)
	copy(dst, l.buf)
	return l.holes, nil
}

// splitChunk is the smallest part of a large read that gets its own
// goroutine.
const splitChunk = 256 << 10

// readSplit reads dst, the frames from first on, in up to k parts at once.
func readSplit(first uint64, dst []byte, k int, read func(first uint64, dst []byte) error) error {
	parts := min(k, len(dst)/splitChunk)
	if parts <= 1 {
		return read(first, dst)
	}
	per := (len(dst)/pageSize + parts - 1) / parts * pageSize
	errs := make(chan error, parts)
	for off := 0; off < len(dst); off += per {
		part := dst[off:min(len(dst), off+per)]
		go func(pfn uint64) { errs <- read(pfn, part) }(first + uint64(off/pageSize))
	}
	var err error
	for off := 0; off < len(dst); off += per {
		if e := <-errs; e != nil && err == nil {
			err = e
		}
	}
	return err
}

// errno maps an error from the source to the one errno a FUSE operation
// returns. Only this function (and readErr) decides errnos.
func errno(err error) syscall.Errno {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, index.ErrRunNotFound), errors.Is(err, index.ErrCheckpointMissing),
		errors.Is(err, index.ErrNoWorkingSet), errors.Is(err, index.ErrNoDeviceState),
		errors.Is(err, index.ErrNoReplayLog):
		return syscall.ENOENT
	case errors.Is(err, context.Canceled):
		return syscall.EINTR
	}
	return syscall.EIO
}

// fail records a failed operation once: one log line with context, the
// error counters, and the errno for the kernel.
func (f *fsys) fail(c *ckpt, op, file string, off int64, size int, err error) syscall.Errno {
	e := errno(err)
	if e != syscall.EIO {
		return e
	}
	if c != nil {
		c.ctrs.errors.Add(1)
	} else {
		f.other.errors.Add(1)
	}
	f.lastErr.set(fmt.Sprintf("%s %s at %d+%d: %v", op, file, off, size, err))
	f.log.Error("ckptfs: "+op+" failed", "file", file, "offset", off, "size", size,
		"corrupt", index.IsCorruption(err), "err", err)
	return e
}

// owner fills the ownership of an attribute.
func (f *fsys) owner(uid, gid *uint32) { *uid, *gid = f.uid, f.gid }

// loadersPerPush is how many goroutines read the store for one push (and
// as many push): twice the cores, because a cold read waits for the disk
// about half the time; more than that gains nothing (docs/DECISIONS.md).
func loadersPerPush() int {
	return 2 * max(1, runtime.GOMAXPROCS(0))
}
