package kvmrec

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/zeebo/xxh3"
)

// scanAll scans the candidates, in two halves on two goroutines when there
// are enough of them and two CPUs: reading and hashing run at memory speed,
// so a second CPU nearly halves the pause. With pre, the parts keep the new
// hashes instead of updating r.hashes (see precopy).
func (r *recorder) scanAll(cands []span, cls *classifier, pre bool) ([]*staging, error) {
	total := spanFrames(cands)
	if total < 4096 || runtime.GOMAXPROCS(0) < 2 || !parallelScan {
		st := &staging{pre: pre}
		err := r.scan(cands, st, cls, r.scratch)
		return []*staging{st}, err
	}
	lo, hi := splitSpans(cands, total/2)
	a, b := &staging{pre: pre}, &staging{pre: pre}
	parts := []*staging{a, b}
	var cls2 *classifier
	if cls != nil {
		cls2 = &classifier{present: cls.present, minRun: cls.minRun, out: cls.out}
	}
	if r.scratch2 == nil {
		r.scratch2 = make([]byte, len(r.scratch))
	}
	errb := make(chan error, 1)
	go func() { errb <- r.scan(hi, b, cls2, r.scratch2) }()
	erra := r.scan(lo, a, cls, r.scratch)
	if err := errors.Join(erra, <-errb); err != nil {
		return parts, err
	}
	if cls != nil {
		cls.join(cls2)
	}
	return parts, nil
}

// parallelScan enables scanAll's second goroutine.
var parallelScan = true

// splitSpans splits sorted spans after n frames.
func splitSpans(spans []span, n uint64) (lo, hi []span) {
	for i, s := range spans {
		if s.n() < n {
			n -= s.n()
			continue
		}
		lo = append(append([]span{}, spans[:i]...), span{s.start, s.start + n})
		if s.start+n < s.end {
			hi = append(hi, span{s.start + n, s.end})
		}
		return lo, append(hi, spans[i+1:]...)
	}
	return spans, nil
}

// readGap is the most non-candidate frames between two candidate runs that
// scan reads through rather than issuing another pread: a system call costs
// about as much as copying a few frames (docs/DECISIONS.md, "Reading through
// gaps"), and the candidates come in short runs (fault-around blocks and the
// single frames written in the interval before).
const readGap = 4

// scan reads the candidate frames with pread, hashes them and copies those
// whose hash differs from the last checkpoint into st.
func (r *recorder) scan(cands []span, st *staging, cls *classifier, scratch []byte) error {
	batch := uint64(len(scratch) / pageSize)
	from := uint64(0) // where cands[i] continues (a long run is split)
	for i := 0; i < len(cands); {
		// One pread covers cands[i:j], with their gaps, up to batch
		// frames.
		lo := max(cands[i].start, from)
		hi := min(cands[i].end, lo+batch)
		j := i + 1
		if hi == cands[i].end {
			for j < len(cands) && cands[j].start-hi <= readGap && cands[j].end-lo <= batch {
				hi = cands[j].end
				j++
			}
		}
		buf := scratch[:(hi-lo)*pageSize]
		if _, err := r.ram.ReadAt(buf, int64(lo*pageSize)); err != nil {
			return fmt.Errorf("reading guest RAM at frame %d: %w", lo, err)
		}
		for k := i; k < j; k++ {
			s := cands[k]
			for p := max(s.start, lo); p < min(s.end, hi); p++ {
				f := buf[(p-lo)*pageSize : (p-lo+1)*pageSize]
				h := xxh3.Hash128(f)
				changed := h != r.hashes[p]
				if cls != nil {
					cls.add(p, changed)
				}
				if !changed {
					continue
				}
				if err := st.add(&r.pool, p, f); err != nil {
					return err
				}
				if st.pre {
					st.hashes = append(st.hashes, h)
				} else {
					r.hashes[p] = h
				}
			}
		}
		if cls != nil {
			cls.batchDone()
		}
		if hi < cands[i].end { // the rest of a long run
			from = hi
			continue
		}
		i = j
	}
	return nil
}
