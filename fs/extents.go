package fs

import (
	"sort"

	"github.com/RoaringBitmap/roaring/v2"
)

// extent is a run of data frames [start, end).
type extent struct{ start, end uint64 }

// extents is the data map of a file: sorted, disjoint, non-adjacent runs of
// data frames. Everything else is a hole.
type extents []extent

// extentsOf turns a frame set into runs.
func extentsOf(bm *roaring.Bitmap) extents {
	var out extents
	if bm == nil {
		return out
	}
	it := bm.ManyIterator()
	buf := make([]uint32, 4096)
	for n := it.NextMany(buf); n > 0; n = it.NextMany(buf) {
		for _, v := range buf[:n] {
			p := uint64(v)
			if k := len(out); k > 0 && out[k-1].end == p {
				out[k-1].end++
				continue
			}
			out = append(out, extent{p, p + 1})
		}
	}
	return out
}

// frames is the number of data frames.
func (e extents) frames() uint64 {
	var n uint64
	for _, x := range e {
		n += x.end - x.start
	}
	return n
}

// index returns the first extent that ends after pfn.
func (e extents) index(pfn uint64) int {
	return sort.Search(len(e), func(i int) bool { return e[i].end > pfn })
}

// overlap calls fn for the part of every extent inside [first, last).
func (e extents) overlap(first, last uint64, fn func(a, b uint64) error) error {
	for i := e.index(first); i < len(e) && e[i].start < last; i++ {
		if err := fn(max(e[i].start, first), min(e[i].end, last)); err != nil {
			return err
		}
	}
	return nil
}

// dataIn counts the data frames inside [first, last).
func (e extents) dataIn(first, last uint64) uint64 {
	var n uint64
	_ = e.overlap(first, last, func(a, b uint64) error { n += b - a; return nil })
	return n
}

// seekData returns the byte offset of the first data at or after off, or
// ok=false when only holes follow (ENXIO).
func (e extents) seekData(off uint64) (uint64, bool) {
	pfn := off / pageSize
	i := e.index(pfn)
	if i == len(e) {
		return 0, false
	}
	if e[i].start <= pfn {
		return off, true
	}
	return e[i].start * pageSize, true
}

// seekHole returns the byte offset of the first hole at or after off; the end
// of the file counts as a hole.
func (e extents) seekHole(off, size uint64) uint64 {
	pfn := off / pageSize
	i := e.index(pfn)
	if i == len(e) || e[i].start > pfn {
		return off
	}
	return min(e[i].end*pageSize, size)
}
