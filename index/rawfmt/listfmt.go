package rawfmt

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/RoaringBitmap/roaring/v2"
)

// ParseList parses the Linux list format ("0-511,1024,2048-4095\n", decimal)
// into a frame set. Every pfn must be below limit. An empty list (or a lone
// newline) is the empty set. Whitespace is allowed only at the end.
func ParseList(data []byte, limit uint64) (*roaring.Bitmap, error) {
	s := strings.TrimRight(string(data), " \t\r\n")
	bm := roaring.New()
	if s == "" {
		return bm, nil
	}
	for n, part := range strings.Split(s, ",") {
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := parsePfn(lo, limit)
		if err != nil {
			return nil, fmt.Errorf("%w: list item %d %s: %v", ErrBadInput, n+1, quoteItem(part), err)
		}
		b := a
		if isRange {
			if b, err = parsePfn(hi, limit); err != nil {
				return nil, fmt.Errorf("%w: list item %d %s: %v", ErrBadInput, n+1, quoteItem(part), err)
			}
			if b < a {
				return nil, fmt.Errorf("%w: list item %d %s: range ends before it starts", ErrBadInput, n+1, quoteItem(part))
			}
		}
		bm.AddRange(a, b+1)
	}
	return bm, nil
}

// maxEchoed is how much of a bad list item an error message quotes: a
// damaged file can hold one item of many megabytes.
const maxEchoed = 40

// quoteItem quotes a list item for an error message, cut to maxEchoed bytes.
func quoteItem(item string) string {
	if len(item) <= maxEchoed {
		return strconv.Quote(item)
	}
	return fmt.Sprintf("%q... (%d bytes)", item[:maxEchoed], len(item))
}

func parsePfn(s string, limit uint64) (uint64, error) {
	if s == "" || len(s) > 20 {
		return 0, fmt.Errorf("not a number")
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("not a decimal number")
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("not a number")
	}
	if v >= limit {
		return 0, fmt.Errorf("pfn %d beyond %d frames", v, limit)
	}
	return v, nil
}

// FormatList writes a frame set in the Linux list format, with a newline.
func FormatList(bm *roaring.Bitmap) string {
	var b strings.Builder
	EachRun(bm, func(start, end uint64) bool {
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(start, 10))
		if end-start > 1 {
			b.WriteByte('-')
			b.WriteString(strconv.FormatUint(end-1, 10))
		}
		return true
	})
	b.WriteByte('\n')
	return b.String()
}

// EachRun calls fn for every run [start, end) of consecutive frames in bm,
// in increasing order, until fn returns false.
func EachRun(bm *roaring.Bitmap, fn func(start, end uint64) bool) {
	it := bm.ManyIterator()
	buf := make([]uint32, 4096)
	var start, end uint64
	open := false
	for n := it.NextMany(buf); n > 0; n = it.NextMany(buf) {
		for _, v := range buf[:n] {
			p := uint64(v)
			if open && p == end {
				end++
				continue
			}
			if open && !fn(start, end) {
				return
			}
			start, end, open = p, p+1, true
		}
	}
	if open {
		fn(start, end)
	}
}
