package kvmrec

import (
	"errors"
	"fmt"
	"os"

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
	size := int64(frames * pageSize)
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
		s := span{uint64(d) / pageSize, min((uint64(h)+pageSize-1)/pageSize, frames)}
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

func appendSpan(out []span, s span) []span {
	if k := len(out) - 1; k >= 0 && out[k].end == s.start {
		out[k].end = s.end
		return out
	}
	return append(out, s)
}
