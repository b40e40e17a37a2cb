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
			return nil, fmt.Errorf("%w: list item %d %q: %v", ErrBadInput, n+1, part, err)
		}
		b := a
		if isRange {
			if b, err = parsePfn(hi, limit); err != nil {
				return nil, fmt.Errorf("%w: list item %d %q: %v", ErrBadInput, n+1, part, err)
			}
			if b < a {
				return nil, fmt.Errorf("%w: list item %d %q: range ends before it starts", ErrBadInput, n+1, part)
			}
		}
		bm.AddRange(a, b+1)
	}
	return bm, nil
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
	it := bm.ManyIterator()
	buf := make([]uint32, 4096)
	start, prev := int64(-1), int64(-1)
	flush := func() {
		if start < 0 {
			return
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatInt(start, 10))
		if prev > start {
			b.WriteByte('-')
			b.WriteString(strconv.FormatInt(prev, 10))
		}
	}
	for n := it.NextMany(buf); n > 0; n = it.NextMany(buf) {
		for _, v := range buf[:n] {
			if int64(v) == prev+1 && start >= 0 {
				prev = int64(v)
				continue
			}
			flush()
			start, prev = int64(v), int64(v)
		}
	}
	flush()
	b.WriteByte('\n')
	return b.String()
}
