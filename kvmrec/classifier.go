package kvmrec

import (
	"cmp"
	"slices"
	"sync/atomic"
)

// classifier sorts the present frames, as the scan meets them in
// increasing order, into ranges to unmap during the pause and frames to
// unmap after it (late). A range holds unchanged present frames and the
// absent frames between them (free to walk); a changed frame ends it, as
// unmapping a written page costs a TLB flush of its own. Each range costs a
// flush too, so a range of fewer than minRun present frames is not worth
// it: its frames go late, with the changed ones.
type classifier struct {
	present *bitset
	minRun  uint64
	run     span   // the current range
	runN    uint64 // present frames in it
	runSub  []span // and where they are
	clean   []span
	late    []span
	out     chan []span

	cutoff   atomic.Bool // the scan is done: stop unmapping in the pause
	leftover []span      // ranges not unmapped in the pause (pageout goroutine's)
}

// presentIn returns the present frames of ranges (sorted, disjoint).
func (k *classifier) presentIn(ranges []span) []span {
	slices.SortFunc(ranges, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	var out []span
	for _, s := range ranges {
		for p := s.start; p < s.end; p++ {
			if k.present.w[p/64]&(1<<(p%64)) != 0 {
				out = appendSpan(out, span{p, p + 1})
			}
		}
	}
	return out
}

// minCleanRun is the fewest unchanged present frames a range unmapped during
// the pause must hold.
var minCleanRun uint64 = 16

func (r *recorder) newClassifier(present []span) *classifier {
	ps := newBitset(r.frames)
	ps.addSpans(present)
	return &classifier{present: ps, minRun: minCleanRun, out: make(chan []span, 64)}
}

func (k *classifier) closeRun() {
	if k.runN == 0 {
		return
	}
	if k.runN >= k.minRun {
		k.clean = append(k.clean, k.run)
	} else {
		for _, s := range k.runSub {
			k.late = appendSpan(k.late, s)
		}
	}
	k.run, k.runN, k.runSub = span{}, 0, k.runSub[:0]
}

// add classifies frame p if it is present.
func (k *classifier) add(p uint64, changed bool) {
	if k.present.w[p/64]&(1<<(p%64)) == 0 {
		return
	}
	if changed {
		k.closeRun()
		k.late = appendSpan(k.late, span{p, p + 1})
		return
	}
	if k.runN == 0 {
		k.run.start = p
	}
	k.run.end = p + 1
	k.runN++
	k.runSub = appendSpan(k.runSub, span{p, p + 1})
}

// batchDone hands the ranges found so far to the pageout goroutine once
// there are enough of them.
func (k *classifier) batchDone() {
	if len(k.clean) >= 8 {
		k.out <- k.clean
		k.clean = nil
	}
}

// join takes over the results of k2, which classified the frames after
// k's.
func (k *classifier) join(k2 *classifier) {
	k2.closeRun()
	if len(k2.clean) > 0 {
		k.out <- k2.clean
	}
	k.closeRun()
	for _, s := range k2.late {
		k.late = appendSpan(k.late, s)
	}
}

func (k *classifier) finish() {
	k.closeRun()
	if len(k.clean) > 0 {
		k.out <- k.clean
		k.clean = nil
	}
	close(k.out)
}
