package kvmrec

import (
	"fmt"
	"sync"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// staging holds copied frames: frame j of pfns[j] is in chunks.
type staging struct {
	pfns   []uint64
	chunks [][]byte

	// A pre-copy staging (see precopy) holds the hash of each frame in
	// hashes, as the frame may change again before the stop; frames the
	// pause scans again are dropped.
	pre    bool
	hashes []xxh3.Uint128
	drop   []bool
}

func (st *staging) dropped(j int) bool { return st.drop != nil && st.drop[j] }

func (st *staging) frame(j int) []byte {
	off := (j % chunkFrames) * pageSize
	return st.chunks[j/chunkFrames][off : off+pageSize]
}

// add copies frame f of pfn.
func (st *staging) add(pool *chunkPool, pfn uint64, f []byte) error {
	j := len(st.pfns)
	if j/chunkFrames >= len(st.chunks) {
		ch, err := pool.get()
		if err != nil {
			return err
		}
		st.chunks = append(st.chunks, ch)
	}
	copy(st.frame(j), f)
	st.pfns = append(st.pfns, pfn)
	return nil
}

func framesIn(parts []*staging) int {
	n := 0
	for _, p := range parts {
		n += len(p.pfns)
	}
	return n
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
	b, err := unix.Mmap(-1, 0, chunkFrames*pageSize, unix.PROT_READ|unix.PROT_WRITE,
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
