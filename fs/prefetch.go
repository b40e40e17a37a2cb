package fs

import (
	"context"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/ckptfs/ckptfs/index"
)

// pushBatch is how many bytes of frames one store read gathers before they
// are pushed, one notify-store per contiguous run of frames. Small enough
// that a jump to a faulting address takes effect within a few batches.
const pushBatch = 1 << 20

// pieceFrames is the unit of work of a push: about pieceFrames frames of
// W_i, as the store cuts them (Frames.WorkingSetPieces), so that two
// loaders never read the same block of the store: with pieces cut by runs
// of frames instead, neighbouring pieces shared a block and the second
// loader waited for the first (a cold read of a 51 MiB working set with
// two loaders took 37-50 ms that way, 26-34 ms in the store's blocks).
const pieceFrames = pushBatch / pageSize

// segment is a run of frames inside a batch.
type segment struct{ pfn, n uint64 }

type batch struct {
	buf  []byte
	segs []segment
}

// pusher is a running push into the page cache of one file. A READ that
// the kernel sends while it runs tells it where a process faults (hint), and
// the push continues from there: the process then trails the push and finds
// its pages in the cache, instead of overtaking it and paying a round trip
// per page. The skipped part is pushed after the end is reached.
type pusher struct {
	hint chan uint64
}

// hintAt tells the push that frame pfn was just wanted; never blocks.
func (p *pusher) hintAt(pfn uint64) {
	select {
	case p.hint <- pfn:
	default:
	}
}

// startPrefetch pushes W_i of n into the page cache from a goroutine.
func (f *fsys) startPrefetch(n *ramFile, ck *ckpt) {
	work, err := f.wsPieces(ck, 0, n.run.Frames)
	if err == nil && f.goPush(ck, func() {
		defer n.prefetchDone()
		select {
		case f.sem <- struct{}{}:
		case <-f.ctx.Done():
			return
		}
		defer func() { <-f.sem }()
		p := &pusher{hint: make(chan uint64, 1)}
		n.mu.Lock()
		n.mu.pusher = p
		n.mu.Unlock()
		start := time.Now()
		f.push(n, ck, work, p)
		took := time.Since(start)
		if f.onPrefetched != nil {
			f.onPrefetched(took)
		}
		f.log.Debug("ckptfs: prefetch done", "file", n.path(), "took", took, "frames", framesOf(work))
	}) {
		return
	}
	n.prefetchDone()
}

func (n *ramFile) prefetchDone() {
	n.mu.Lock()
	n.mu.prefetching = false
	n.mu.pusher = nil
	n.mu.Unlock()
}

// pushWindow pushes the working-set frames of a refused readahead window,
// unless as many pushes as cores are already running (it is only a hint).
func (f *fsys) pushWindow(n *ramFile, ck *ckpt, first, last uint64) {
	select {
	case f.windowSem <- struct{}{}:
	default:
		return
	}
	work, err := f.wsPieces(ck, first, last)
	if err != nil || !f.goPush(ck, func() {
		defer func() { <-f.windowSem }()
		f.push(n, ck, work, nil)
	}) {
		<-f.windowSem
	}
}

// goPush runs fn on a goroutine that the mount waits for when it ends,
// holding a reference on ck meanwhile; false if the mount is ending.
func (f *fsys) goPush(ck *ckpt, fn func()) bool {
	f.mu.Lock()
	if f.ctx.Err() != nil {
		f.mu.Unlock()
		return false
	}
	f.wg.Add(1)
	ck.refs++
	f.mu.Unlock()
	f.prefetching.Add(1)
	go func() {
		defer f.wg.Done()
		defer f.prefetching.Add(-1)
		defer f.release(ck)
		fn()
	}()
	return true
}

// wsPieces returns the pieces of W_i inside [first, last) to push.
func (f *fsys) wsPieces(ck *ckpt, first, last uint64) ([]index.Piece, error) {
	fr, err := f.openFrames(ck)
	if err != nil {
		return nil, err
	}
	return fr.WorkingSetPieces(first, last, pieceFrames)
}

// framesOf counts the frames of pieces.
func framesOf(work []index.Piece) uint64 {
	var n uint64
	for _, w := range work {
		n += w.Frames()
	}
	return n
}

// workList hands out the pieces of a push: in ascending order from a
// cursor that a hint moves, wrapping around to what was skipped.
type workList struct {
	mu   sync.Mutex
	work []index.Piece
	done []bool
	left int
	cur  int
	hint chan uint64 // nil without hints
}

// next returns the next piece to push, or false when all are taken.
func (l *workList) next() (index.Piece, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.left == 0 {
		return index.Piece{}, false
	}
	select {
	case pfn := <-l.hint:
		// Continue where the process faults.
		l.cur = sort.Search(len(l.work), func(i int) bool {
			e := l.work[i].Extents
			return e[len(e)-1].End > pfn
		}) % len(l.work)
	default:
	}
	for l.done[l.cur] {
		l.cur = (l.cur + 1) % len(l.work)
	}
	w := l.work[l.cur]
	l.done[l.cur] = true
	l.left--
	l.cur = (l.cur + 1) % len(l.work)
	return w, true
}

// push reads the frames of work from the store and stores them in the
// kernel's page cache of n with notify-store, in ascending order, jumping
// ahead when p (if not nil) gets a hint. Loader goroutines read batches
// from the store while this one pushes, so that the store reads overlap the
// kernel's copies.
//
// Never call it from a READ handler: notify-store locks the pages it fills,
// and the kernel holds a page locked while it waits for a READ's answer.
func (f *fsys) push(n *ramFile, ck *ckpt, work []index.Piece, p *pusher) {
	if len(work) == 0 {
		return
	}
	fr, err := f.openFrames(ck)
	if err != nil {
		return
	}
	ctx, cancel := context.WithCancel(f.ctx)
	defer cancel()

	list := &workList{work: work, done: make([]bool, len(work)), left: len(work)}
	if p != nil {
		list.hint = p.hint
	}
	loaders := 1
	if p != nil {
		loaders = f.loaders
	}
	loaders = min(loaders, len(work))
	size := min(framesOf(work)*pageSize, pushBatch)
	nbuf := min(loaders+2, len(work))
	free := make(chan []byte, nbuf)
	for range nbuf {
		free <- f.getPushBuf(size)
	}
	defer func() {
		// A push that stopped early may have dropped a buffer; keep
		// what came back, never wait.
		for {
			select {
			case b := <-free:
				f.putPushBuf(b)
			default:
				return
			}
		}
	}()
	ready := make(chan batch, nbuf)
	var wg sync.WaitGroup
	for range loaders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.loadBatches(ctx, n, fr, list, free, ready)
		}()
	}
	go func() {
		wg.Wait()
		close(ready)
	}()

	// As many goroutines push as load: a notify-store is mostly the
	// kernel allocating and filling pages, which parallelises.
	inode := n.EmbeddedInode()
	var stopped atomic.Bool
	var writers sync.WaitGroup
	for range loaders {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for b := range ready {
				f.store(inode, n, ck, b, &stopped, cancel)
				free <- b.buf
			}
		}()
	}
	writers.Wait()
}

// store pushes the segments of b into the page cache of inode.
func (f *fsys) store(inode *gofs.Inode, n *ramFile, ck *ckpt, b batch, stopped *atomic.Bool, cancel func()) {
	off := 0
	for _, s := range b.segs {
		if stopped.Load() {
			return
		}
		data := b.buf[off : off+int(s.n*pageSize)]
		off += len(data)
		if errno := inode.WriteCache(int64(s.pfn*pageSize), data); errno != 0 {
			// ENOENT: the kernel forgot the inode; ENOSYS: not
			// mounted (node tests).
			if errno != syscall.ENOENT && errno != syscall.ENOSYS {
				f.log.Debug("ckptfs: push stopped", "file", n.path(), "err", errno)
			}
			stopped.Store(true)
			cancel()
			return
		}
		ck.ctrs.prefetchBytes.Add(uint64(len(data)))
	}
}

// loadBatches fills batches with pieces from list until it is empty.
func (f *fsys) loadBatches(ctx context.Context, n *ramFile, fr Frames, list *workList, free chan []byte, ready chan<- batch) {
	var b batch
	send := func() bool {
		if len(b.segs) == 0 {
			if b.buf != nil {
				free <- b.buf
				b.buf = nil
			}
			return true
		}
		select {
		case ready <- b:
			b = batch{}
			return true
		case <-ctx.Done():
			return false
		}
	}
	for {
		w, ok := list.next()
		if !ok {
			send()
			return
		}
		need := int(w.Frames() * pageSize)
		if b.buf != nil && cap(b.buf)-len(b.buf) < need && !send() {
			return
		}
		if b.buf == nil {
			select {
			case b.buf = <-free:
				b.buf = b.buf[:0]
			case <-ctx.Done():
				return
			}
		}
		f.loadPiece(n, fr, w, &b)
	}
}

// loadPiece appends the frames of piece w to b.
func (f *fsys) loadPiece(n *ramFile, fr Frames, w index.Piece, b *batch) {
	at := len(b.buf)
	b.buf = b.buf[:at+int(w.Frames()*pageSize)]
	if err := fr.ReadPiece(w, b.buf[at:]); err != nil {
		// Read the piece run by run, so that one bad frame costs only
		// its run.
		b.buf = b.buf[:at]
		for _, e := range w.Extents {
			f.loadRun(n, fr, e, b)
		}
		return
	}
	for _, e := range w.Extents {
		b.addSegment(e)
	}
}

// loadRun appends the frames of e to b.
func (f *fsys) loadRun(n *ramFile, fr Frames, e index.Extent, b *batch) {
	at := len(b.buf)
	b.buf = b.buf[:at+int((e.End-e.Start)*pageSize)]
	if err := fr.ReadFrames(e.Start, b.buf[at:]); err != nil {
		// Leave these frames to the READ path, which reports the
		// error for the frames a process actually touches.
		b.buf = b.buf[:at]
		f.log.Debug("ckptfs: push skipped frames", "file", n.path(), "pfn", e.Start, "frames", e.End-e.Start, "err", err)
		return
	}
	b.addSegment(e)
}

// addSegment records that the frames of e were appended to b.buf.
func (b *batch) addSegment(e index.Extent) {
	if k := len(b.segs); k > 0 && b.segs[k-1].pfn+b.segs[k-1].n == e.Start {
		b.segs[k-1].n += e.End - e.Start
	} else {
		b.segs = append(b.segs, segment{e.Start, e.End - e.Start})
	}
}

// getPushBuf returns an empty batch buffer of capacity size. Full-size ones
// are kept between pushes: fresh memory costs a page fault per 4 KiB, which
// is slow on virtual machines that trap to the hypervisor for it.
func (f *fsys) getPushBuf(size uint64) []byte {
	if size == pushBatch {
		select {
		case b := <-f.pushBufs:
			return b[:0]
		default:
		}
	}
	return make([]byte, 0, size)
}

func (f *fsys) putPushBuf(b []byte) {
	if cap(b) != pushBatch {
		return
	}
	select {
	case f.pushBufs <- b:
	default:
	}
}
