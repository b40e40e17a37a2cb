package kvmrec

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// punched returns the frames that are holes in the RAM file but held
// non-zero content at the last checkpoint. A VMM can punch guest RAM
// (virtio-balloon, discard), which zeroes those frames and unmaps them, so
// the pagemap does not show them.
//
// Walking the holes of a large file costs milliseconds to a hundred
// milliseconds, so punched runs before the pause (a frame punched between
// the walk and the stop is zero from the next checkpoint on), and walks
// only when the file has fewer blocks than at its last check, or every
// holeWalkEvery checkpoints (a punch hidden by allocations in the same
// interval). Unmapping can free clean, never-written pages (zeros, which
// need no record), so the file also shrinks without punches; that only
// costs a walk. Punched frames are frames the guest gave away, whose content
// it does not rely on.
func (r *recorder) punched(i int) ([]span, error) {
	blocks, err := r.fileBlocks()
	if err != nil {
		return nil, err
	}
	shrank := blocks < r.blocksBefore
	r.blocksBefore = blocks
	if !shrank && i%holeWalkEvery != 0 {
		return nil, nil
	}
	data, err := dataSpans(r.ram, r.frames)
	if err != nil {
		return nil, err
	}
	var out []span
	for _, h := range complementSpans(data, r.frames) {
		for p := h.start; p < h.end; p++ {
			if r.hashes[p] != zeroHash {
				out = appendSpan(out, span{p, p + 1})
			}
		}
	}
	return out, nil
}

// holeWalkEvery bounds how many checkpoints a punched hole can go unseen.
const holeWalkEvery = 16

func (r *recorder) fileBlocks() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(r.ram.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat of the RAM file: %w", err)
	}
	return st.Blocks, nil
}
