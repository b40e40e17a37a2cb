package kvmrec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// readPagemap returns the frames whose page is present in the VMM's page
// table (pagemap bit 63).
func (r *recorder) readPagemap() ([]span, error) {
	return presentFrames(r.pagemap, r.m, &r.pmBuf)
}

// presentFrames reads which frames of mapping m are present in the page
// table that pagemap (/proc/PID/pagemap) shows; buf is reused.
func presentFrames(pagemap *os.File, m ramMapping, buf *[]byte) ([]span, error) {
	var present []span
	for _, s := range m.segs {
		need := int(s.n * 8)
		if cap(*buf) < need {
			*buf = make([]byte, need)
		}
		b := (*buf)[:need]
		if _, err := pagemap.ReadAt(b, int64(s.addr/pageSize*8)); err != nil {
			if errors.Is(err, unix.ESRCH) || errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: reading its page table: %v", ErrVMGone, err)
			}
			return nil, fmt.Errorf("reading the VMM's pagemap: %w", err)
		}
		for k := uint64(0); k < s.n; k++ {
			if binary.LittleEndian.Uint64(b[k*8:])>>63 != 0 {
				present = appendSpan(present, span{s.first + k, s.first + k + 1})
			}
		}
	}
	return present, nil
}
