package index

import (
	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index/rawfmt"
)

// ParseList parses the Linux list format ("0-511,1024,2048-4095\n") into a
// frame set whose pfns are all below limit; see rawfmt.ParseList.
func ParseList(data []byte, limit uint64) (*roaring.Bitmap, error) {
	return rawfmt.ParseList(data, limit)
}

// FormatList writes a frame set in the Linux list format, with a newline.
func FormatList(bm *roaring.Bitmap) string { return rawfmt.FormatList(bm) }
