package kvmrec

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/RoaringBitmap/roaring/v2"
	"golang.org/x/sys/unix"
)

// span is the frames [start, end).
type span struct{ start, end uint64 }

func (s span) n() uint64 { return s.end - s.start }

func spanFrames(spans []span) uint64 {
	var n uint64
	for _, s := range spans {
		n += s.n()
	}
	return n
}

// unionSpans merges two sorted, disjoint span lists.
func unionSpans(a, b []span) []span {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	out := make([]span, 0, len(a)+len(b))
	add := func(s span) {
		if k := len(out) - 1; k >= 0 && s.start <= out[k].end {
			out[k].end = max(out[k].end, s.end)
			return
		}
		out = append(out, s)
	}
	i, j := 0, 0
	for i < len(a) || j < len(b) {
		if j >= len(b) || i < len(a) && a[i].start <= b[j].start {
			add(a[i])
			i++
		} else {
			add(b[j])
			j++
		}
	}
	return out
}

// complementSpans returns the frames of [0, frames) outside spans.
func complementSpans(spans []span, frames uint64) []span {
	var out []span
	next := uint64(0)
	for _, s := range spans {
		if s.start > next {
			out = append(out, span{next, s.start})
		}
		next = max(next, s.end)
	}
	if next < frames {
		out = append(out, span{next, frames})
	}
	return out
}

// spansBitmap returns the frames of spans as a bitmap. (AddRange per span
// is quadratic on run containers; one AddMany of sorted values is not.)
func spansBitmap(spans []span) *roaring.Bitmap {
	vals := make([]uint32, 0, spanFrames(spans))
	for _, s := range spans {
		for p := s.start; p < s.end; p++ {
			vals = append(vals, uint32(p))
		}
	}
	bm := roaring.New()
	bm.AddMany(vals)
	bm.RunOptimize()
	return bm
}

// bitset is a fixed-size set of frames with its cardinality.
type bitset struct {
	w []uint64
	n uint64
}

func newBitset(frames uint64) *bitset { return &bitset{w: make([]uint64, (frames+63)/64)} }

func (b *bitset) addSpans(spans []span) {
	for _, s := range spans {
		for p := s.start; p < s.end; p++ {
			m := uint64(1) << (p % 64)
			if b.w[p/64]&m == 0 {
				b.w[p/64] |= m
				b.n++
			}
		}
	}
}

// dataSpans returns the frames of the file that are not holes (SEEK_DATA /
// SEEK_HOLE). Holes read as zeros.
func dataSpans(f *os.File, frames uint64) ([]span, error) {
	fd := int(f.Fd())
	size := int64(frames * PageSize)
	var out []span
	for off := int64(0); off < size; {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			if errors.Is(err, unix.EINVAL) { // no SEEK_DATA: all data
				return []span{{0, frames}}, nil
			}
			return nil, fmt.Errorf("seeking data in %s: %w", f.Name(), err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("seeking holes in %s: %w", f.Name(), err)
		}
		s := span{uint64(d) / PageSize, min((uint64(h)+PageSize-1)/PageSize, frames)}
		if s.end > s.start {
			if k := len(out) - 1; k >= 0 && out[k].end >= s.start {
				out[k].end = s.end
			} else {
				out = append(out, s)
			}
		}
		off = h
	}
	return out, nil
}

// chunkFrames is the size of a staging chunk (2 MiB).
const chunkFrames = 512

// chunkPool recycles staging chunks: anonymous mappings populated in
// advance, so that copying frames during a pause never faults.
type chunkPool struct {
	mu     sync.Mutex
	free   [][]byte
	retain int // chunks kept when returned; the rest are unmapped
	mapped int // chunks that exist (free or in use)
}

func (p *chunkPool) alloc() ([]byte, error) {
	b, err := unix.Mmap(-1, 0, chunkFrames*PageSize, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("allocating a staging buffer: %w", err)
	}
	p.mapped++
	return b, nil
}

// get returns a free chunk, mapping a new one when none is free.
func (p *chunkPool) get() ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if k := len(p.free); k > 0 {
		b := p.free[k-1]
		p.free = p.free[:k-1]
		return b, nil
	}
	return p.alloc()
}

func (p *chunkPool) put(chunks [][]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range chunks {
		if len(p.free) < p.retain {
			p.free = append(p.free, b)
		} else {
			_ = unix.Munmap(b)
			p.mapped--
		}
	}
}

// reserve makes sure n chunks are free, and that returned chunks are kept
// up to keep.
func (p *chunkPool) reserve(n, keep int) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.retain = max(keep, n)
	for len(p.free) < n {
		b, err := p.alloc()
		if err != nil {
			return err
		}
		p.free = append(p.free, b)
	}
	return nil
}

func (p *chunkPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.free {
		_ = unix.Munmap(b)
	}
	p.free = nil
}

// iovec is struct iovec for a remote address (process_madvise).
type iovec struct {
	base uint64
	len  uint64
}

// processMadvise advises the ranges of another process; it returns the bytes
// advised (less than the total when the kernel stopped early).
func processMadvise(pidfd int, iovs []iovec, advice int) (uint64, error) {
	if len(iovs) == 0 {
		return 0, nil
	}
	r, _, e := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd),
		uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)), uintptr(advice), 0, 0)
	if e != 0 {
		return 0, e
	}
	return uint64(r), nil
}
