package fs

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ckptfs/ckptfs/index"
)

// ramFile is <i>.ram (sparse: W_i is data, the rest holes) or full/<i>.ram
// (every frame; the all-zero frames are the holes).
type ramFile struct {
	gofs.Inode
	readOnlyNode
	f      *fsys
	run    index.RunInfo
	i      int
	sparse bool
	mtime  time.Time

	mu struct {
		sync.Mutex
		ck          *ckpt
		opens       int
		prefetching bool
		pusher      *pusher    // the running prefetch, if any
		refused     [32]window // recently refused readahead windows (ring)
		nrefused    int
		pending     *windowPush // the push of the last refused window, not started yet
	}
}

// windowPush is the push of the working-set frames of a refused window. It
// starts once the READ the kernel sends for the page it actually needs has
// been answered (or after windowPushDelay), so that it does not compete
// with that READ.
type windowPush struct {
	first, last uint64
	once        sync.Once
	timer       *time.Timer
}

var windowPushDelay = 2 * time.Millisecond // var for tests

// window is a range of frames [first, last) refused at a time.
type window struct {
	first, last uint64
	at          time.Time
}

var (
	_ = (gofs.NodeGetattrer)((*ramFile)(nil))
	_ = (gofs.NodeSetattrer)((*ramFile)(nil))
	_ = (gofs.NodeOpener)((*ramFile)(nil))
	_ = (gofs.NodeReader)((*ramFile)(nil))
	_ = (gofs.NodeWriter)((*ramFile)(nil))
	_ = (gofs.NodeReleaser)((*ramFile)(nil))
	_ = (gofs.NodeLseeker)((*ramFile)(nil))
	_ = (gofs.NodeGetxattrer)((*ramFile)(nil))
	_ = (gofs.NodeListxattrer)((*ramFile)(nil))
	_ = (gofs.NodeOnForgetter)((*ramFile)(nil))
)

func (n *ramFile) path() string {
	if n.sparse {
		return n.run.Name + "/" + strconv.Itoa(n.i) + ".ram"
	}
	return n.run.Name + "/full/" + strconv.Itoa(n.i) + ".ram"
}

func (n *ramFile) kind() string {
	if n.sparse {
		return "sparse"
	}
	return "full"
}

// ckpt returns the node's checkpoint handle, taken on first use and given
// back when the kernel forgets the node.
func (n *ramFile) ckpt() *ckpt {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.mu.ck == nil {
		n.mu.ck = n.f.acquire(n.run, n.i)
	}
	return n.mu.ck
}

func (n *ramFile) OnForget() {
	n.mu.Lock()
	ck := n.mu.ck
	n.mu.ck = nil
	n.mu.Unlock()
	if ck != nil {
		n.f.release(ck)
	}
}

// dataMap returns the file's data frames: W_i, or the non-zero frames.
func (n *ramFile) dataMap(ck *ckpt) (extents, error) {
	if n.sparse {
		ws, _, err := n.f.wsExtents(ck)
		return ws, err
	}
	return n.f.dataExtents(ck)
}

func (n *ramFile) attr(a *fuse.Attr) syscall.Errno {
	return n.attrWith(n.ckpt(), a)
}

// entryAttr is attr for Lookup. The node it is called on may be dropped
// (go-fuse keeps the node it already has for the same inode number), and a
// dropped node is never forgotten, so it must not keep a checkpoint handle.
func (n *ramFile) entryAttr(a *fuse.Attr) syscall.Errno {
	ck := n.f.acquire(n.run, n.i)
	defer n.f.release(ck)
	return n.attrWith(ck, a)
}

func (n *ramFile) attrWith(ck *ckpt, a *fuse.Attr) syscall.Errno {
	ext, err := n.dataMap(ck)
	if err != nil {
		return n.f.fail(ck, "getattr", n.path(), 0, 0, err)
	}
	a.Mode = n.f.mode.ram
	a.Nlink = 1
	a.Size = n.run.RAMSize
	a.Blksize = pageSize
	a.Blocks = ext.frames() * (pageSize / 512)
	n.f.owner(&a.Uid, &a.Gid)
	setTimes(a, n.mtime)
	return 0
}

func (n *ramFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	return n.attr(&out.Attr)
}

func (n *ramFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// ramHandle is an open .ram file.
type ramHandle struct {
	direct bool // opened O_DIRECT: READs are the caller's own, never readahead
}

// Open succeeds for reading and for O_RDWR (a VMM maps the file privately);
// writes then fail with EROFS. An open with write access gets direct I/O,
// which makes the kernel refuse a shared mapping of it (ENODEV), so that no
// writable shared mapping exists: its dirty pages would change what every
// reader sees, and a failed write-back leaves them in the page cache (see
// doc.go). The first open of <i>.ram starts pushing W_i into the page cache.
func (n *ramFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_TRUNC != 0 {
		return nil, 0, syscall.EROFS
	}
	ck := n.ckpt()
	if _, err := n.dataMap(ck); err != nil {
		return nil, 0, n.f.fail(ck, "open", n.path(), 0, 0, err)
	}
	n.mu.Lock()
	start := n.sparse && n.f.prefetch && n.mu.opens == 0 && !n.mu.prefetching
	n.mu.opens++
	if start {
		n.mu.prefetching = true
	}
	n.mu.Unlock()
	if start {
		n.f.startPrefetch(n, ck)
	}
	h := &ramHandle{direct: flags&syscall.O_DIRECT != 0}
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		// The faults of a private mapping of this handle still fill
		// the page cache, with READs that are not direct (rawFS).
		return h, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_KEEP_CACHE, 0
	}
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *ramFile) Release(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	n.mu.Lock()
	n.mu.opens--
	n.mu.Unlock()
	return 0
}

func (n *ramFile) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	return 0, syscall.EROFS
}

// Read serves [off, off+len(dest)). The store is read in whole frames; holes
// of <i>.ram are zeros. A hole read by a one-frame READ is a working-set
// miss; holes inside a served multi-frame READ are counted apart (doc.go,
// Counters).
func (n *ramFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	start := time.Now()
	kind := n.kind()
	defer func() { n.f.latency.WithLabelValues(kind).Observe(time.Since(start).Seconds()) }()

	size := n.run.RAMSize
	if off < 0 {
		return nil, syscall.EINVAL
	}
	if uint64(off) >= size || len(dest) == 0 {
		return fuse.ReadResultData(nil), 0
	}
	end := min(uint64(off)+uint64(len(dest)), size)
	first, last := uint64(off)/pageSize, (end+pageSize-1)/pageSize
	span := (last - first) * pageSize
	var buf []byte
	if uint64(off)%pageSize == 0 && uint64(len(dest)) >= span {
		buf = dest[:span]
	} else {
		buf = make([]byte, span)
	}
	ck := n.ckpt()
	h, _ := fh.(*ramHandle)
	direct := (h != nil && h.direct) || n.f.directRead(ctx)
	var err error
	var holes uint64
	if n.sparse {
		n.mu.Lock()
		p := n.mu.pusher
		n.mu.Unlock()
		if p != nil {
			p.hintAt(first)
		}
		if !direct {
			if e := n.refuseReadahead(ctx, ck, first, last); e != 0 {
				return nil, e
			}
		}
		holes, err = n.f.readSparse(ck, first, buf)
	} else {
		err = n.f.readFrames(ck, first, buf)
	}
	if err != nil {
		if last-first > 1 && !direct {
			// Readahead: the kernel drops it and reads the pages it
			// needs one by one; those reads report the error.
			n.f.log.Debug("ckptfs: readahead failed", "file", n.path(), "offset", off, "size", len(dest), "err", err)
			return nil, errno(err)
		}
		return nil, n.f.fail(ck, "read", n.path(), off, len(dest), err)
	}
	served := end - uint64(off)
	if n.sparse {
		n.answered(ck, first, last)
		ck.ctrs.reads.Add(1)
		ck.ctrs.bytes.Add(served)
		switch {
		case holes > 0 && last-first == 1:
			// A fault or read of exactly this hole: the process
			// wanted a frame outside W_i.
			if n.f.log.Enabled(ctx, slog.LevelDebug) {
				pid, comm := caller(ctx)
				n.f.log.Debug("working-set miss", "file", n.path(), "pfn", first, "pid", pid, "comm", comm)
			}
			ck.ctrs.misses.Add(1)
			ck.ctrs.missFrames.Add(holes)
		case holes > 0:
			// A multi-frame READ that was served (a folio-sized
			// retry of refused readahead, or O_DIRECT) carries holes
			// nobody asked for one by one; they are not misses.
			ck.ctrs.folioHoleFrames.Add(holes)
		}
	} else {
		ck.ctrs.fullReads.Add(1)
		ck.ctrs.fullBytes.Add(served)
	}
	lo := uint64(off) - first*pageSize
	return fuse.ReadResultData(buf[lo : lo+served]), 0
}

// Lseek answers SEEK_DATA and SEEK_HOLE from the data map; the kernel
// handles the other whences itself.
func (n *ramFile) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	ck := n.ckpt()
	ext, err := n.dataMap(ck)
	if err != nil {
		return 0, n.f.fail(ck, "lseek", n.path(), int64(off), 0, err)
	}
	size := n.run.RAMSize
	if off >= size {
		return 0, syscall.ENXIO
	}
	switch whence {
	case seekData:
		p, ok := ext.seekData(off)
		if !ok {
			return 0, syscall.ENXIO
		}
		return p, 0
	case seekHole:
		return ext.seekHole(off, size), 0
	}
	return 0, syscall.EINVAL
}

const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// xattrs returns the user.ckptfs.* attributes of the file, in order.
func (n *ramFile) xattrs() ([][2]string, syscall.Errno) {
	ck := n.ckpt()
	ext, err := n.dataMap(ck)
	if err != nil {
		return nil, n.f.fail(ck, "getxattr", n.path(), 0, 0, err)
	}
	out := [][2]string{
		{"user.ckptfs.run", n.run.Name},
		{"user.ckptfs.interval", strconv.Itoa(n.i)},
		{"user.ckptfs.kind", n.kind()},
	}
	if _, bm, err := n.f.wsExtents(ck); err == nil {
		out = append(out, [2]string{"user.ckptfs.ws_frames", strconv.FormatUint(bm.GetCardinality(), 10)})
	}
	out = append(out, [2]string{"user.ckptfs.data_frames", strconv.FormatUint(ext.frames(), 10)})
	return out, 0
}

func (n *ramFile) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	xs, e := n.xattrs()
	if e != 0 {
		return 0, e
	}
	for _, x := range xs {
		if x[0] == attr {
			return copyXattr(dest, x[1])
		}
	}
	return 0, syscall.ENODATA
}

func (n *ramFile) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	xs, e := n.xattrs()
	if e != 0 {
		return 0, e
	}
	var b []byte
	for _, x := range xs {
		b = append(append(b, x[0]...), 0)
	}
	return copyXattr(dest, string(b))
}

// copyXattr answers a size query (empty dest) or copies v.
func copyXattr(dest []byte, v string) (uint32, syscall.Errno) {
	if len(dest) == 0 {
		return uint32(len(v)), 0
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

// refusedRetry is how long a refused readahead window is remembered: a
// folio-shaped request inside it (and smaller: the kernel does repeat a
// whole window) is then served whatever it holds, so that
// a kernel that caches the file in large folios, and retries a failed
// readahead by reading a whole folio, never sees an error. (Linux 6.18 uses
// single-page folios for FUSE and retries page by page.)
const refusedRetry = 2 * time.Second

// faultRead reports whether a one-frame READ comes from a process that has
// the file mapped: a fault's read, or a read-around of a single hole between
// cached frames, which the kernel sends the same way. Refusing it once is
// safe, because a fault that needs the page reads it again; read(2) would
// fail instead, so a process without a mapping is always served.
func (n *ramFile) faultRead(ctx context.Context) bool {
	return callerMaps(ctx, n.StableAttr().Ino, "/"+n.path())
}

// refuseReadahead implements the readahead policy of <i>.ram: a READ of
// several frames that touches a hole is kernel readahead (a page fault's
// read-around, or readahead past the end of a data run), not a process
// asking for those holes; so is, often, a one-frame READ of a hole from a
// process that maps the file (faultRead). A one-frame READ inside a window
// refused moments ago is the kernel asking again for a page a process does
// need, and is served. Serving it would put zero pages into the page
// cache, where fault-around maps them into the VMM without a fault, so
// working-set misses would go unseen and unmapped memory would fill with
// zeros. Such a READ fails instead; the kernel treats failed readahead as
// advisory and reads the page actually wanted on its own (a one-frame READ,
// which is served and, for a hole, counted as a miss). The working-set
// frames of the refused window are pushed into the page cache from a
// goroutine, so they keep the benefit of readahead.
func (n *ramFile) refuseReadahead(ctx context.Context, ck *ckpt, first, last uint64) syscall.Errno {
	ws, _, err := n.f.wsExtents(ck)
	if err != nil {
		return 0 // the read reports it
	}
	data := ws.dataIn(first, last)
	if data == last-first {
		return 0
	}
	now := time.Now()
	n.mu.Lock()
	for _, w := range n.mu.refused {
		retry := last-first == 1 || folioShaped(first, last) && last-first < w.last-w.first
		if retry && w.first <= first && last <= w.last && now.Sub(w.at) < refusedRetry {
			n.mu.Unlock()
			return 0
		}
	}
	n.mu.Unlock()
	// Looked up only for a hole not asked for before: it reads the
	// caller's /proc/PID/maps.
	if last-first == 1 && !n.faultRead(ctx) {
		return 0
	}
	n.mu.Lock()
	n.mu.refused[n.mu.nrefused%len(n.mu.refused)] = window{first, last, now}
	n.mu.nrefused++
	prefetching := n.mu.pusher != nil
	n.mu.Unlock()
	ck.ctrs.refused.Add(1)
	if data > 0 && !prefetching {
		n.deferWindowPush(ck, first, last)
	}
	return syscall.EIO
}

// deferWindowPush arranges for the push of a refused window.
func (n *ramFile) deferWindowPush(ck *ckpt, first, last uint64) {
	wp := &windowPush{first: first, last: last}
	n.mu.Lock()
	old := n.mu.pending
	n.mu.pending = wp
	// Under the lock: the timer may fire before AfterFunc returns, and
	// startWindowPush reads wp.timer under the lock.
	wp.timer = time.AfterFunc(windowPushDelay, func() { n.startWindowPush(ck, wp) })
	n.mu.Unlock()
	if old != nil {
		n.startWindowPush(ck, old)
	}
}

// startWindowPush starts wp, once.
func (n *ramFile) startWindowPush(ck *ckpt, wp *windowPush) {
	wp.once.Do(func() {
		n.mu.Lock()
		wp.timer.Stop()
		if n.mu.pending == wp {
			n.mu.pending = nil
		}
		n.mu.Unlock()
		n.f.pushWindow(n, ck, wp.first, wp.last)
	})
}

// answered starts the pending window push if the READ of [first, last)
// just served lies in its window.
func (n *ramFile) answered(ck *ckpt, first, last uint64) {
	n.mu.Lock()
	wp := n.mu.pending
	n.mu.Unlock()
	if wp != nil && wp.first <= first && last <= wp.last {
		n.startWindowPush(ck, wp)
	}
}

// folioShaped reports whether [first, last) could be one folio: a power of
// two of frames, aligned to its size.
func folioShaped(first, last uint64) bool {
	n := last - first
	return n&(n-1) == 0 && first%n == 0
}
