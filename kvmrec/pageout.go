package kvmrec

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

type lateResult struct {
	took time.Duration
	err  error
}

// startLate unmaps the late frames in the background, with the VM running.
func (r *recorder) startLate() {
	if len(r.late) == 0 {
		return
	}
	late := r.late
	r.lateDone = make(chan lateResult, 1)
	go func() {
		t := time.Now()
		err := r.pageout(late, 0)
		r.lateDone <- lateResult{time.Since(t), err}
	}()
}

// waitLate waits for the background unmapping: it must be complete before
// the next pagemap read, or it could hide accesses of the next interval.
func (r *recorder) waitLate() (lateResult, error) {
	if r.lateDone == nil {
		return lateResult{}, nil
	}
	res := <-r.lateDone
	r.lateDone = nil
	if res.err != nil {
		return res, fmt.Errorf("unmapping the frames changed in the last interval: %w", res.err)
	}
	return res, nil
}

// prepass unmaps every present frame of the VMM while the VM runs (before
// checkpoint 0 only).
func (r *recorder) prepass() error {
	present, err := r.readPagemap()
	if err != nil {
		return err
	}
	return r.pageout(present, pageoutGap)
}

// pageoutGap is the largest run of absent frames between two present runs
// that one MADV_PAGEOUT range may cover: walking absent entries is cheaper
// than another range.
const pageoutGap = 32

// pageout unmaps the present frames from the VMM's page table
// (process_madvise MADV_PAGEOUT), so that the next access faults and shows
// up in the pagemap again.
//
// Ranges are merged across gaps of up to maxGap frames, which must then hold
// nothing that should stay mapped.
func (r *recorder) pageout(present []span, maxGap uint64) error {
	var iovs []iovec
	for _, seg := range r.m.segs {
		for _, s := range present {
			if s.end <= seg.first || s.start >= seg.first+seg.n {
				continue
			}
			lo, hi := max(s.start, seg.first), min(s.end, seg.first+seg.n)
			base := seg.addr + (lo-seg.first)*pageSize
			if k := len(iovs) - 1; k >= 0 && base >= iovs[k].base+iovs[k].len &&
				base-(iovs[k].base+iovs[k].len) <= maxGap*pageSize {
				iovs[k].len = base + (hi-lo)*pageSize - iovs[k].base
				continue
			}
			iovs = append(iovs, iovec{base: base, len: (hi - lo) * pageSize})
		}
	}
	const maxIov = 1024 // UIO_MAXIOV
	for len(iovs) > 0 {
		batch := iovs[:min(len(iovs), maxIov)]
		var total uint64
		for _, v := range batch {
			total += v.len
		}
		n, err := processMadvise(r.pidfd, batch, unix.MADV_PAGEOUT)
		switch {
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ESRCH):
			return fmt.Errorf("%w: unmapping its pages: %v", ErrVMGone, err)
		case errors.Is(err, unix.EPERM):
			return fmt.Errorf("process_madvise on the VMM (pid %d) is not permitted: the pagemap tracker needs CAP_SYS_NICE and ptrace access (run as root), or use the hash tracker: %w", r.pid, err)
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("MADV_PAGEOUT does not work on the RAM mapping (hugetlbfs or locked memory?); use the hash tracker: %w", err)
		case err != nil:
			return fmt.Errorf("process_madvise(MADV_PAGEOUT): %w", err)
		}
		if n >= total {
			iovs = iovs[len(batch):]
			continue
		}
		// The kernel stopped early: go on after what it did.
		for n > 0 {
			if n >= iovs[0].len {
				n -= iovs[0].len
				iovs = iovs[1:]
				continue
			}
			iovs[0].base += n
			iovs[0].len -= n
			n = 0
		}
	}
	return nil
}

// iovec is struct iovec for a remote address (process_madvise).
type iovec struct {
	base uint64
	len  uint64
}

// processMadvise advises the ranges of another process; it returns the bytes
// advised (less than the total when the kernel stopped early).
func processMadvise(pidfd int, iovs []iovec, advice int) (uint64, error) {
	if len(iovs) == 0 {
		return 0, nil
	}
	r, _, e := unix.Syscall6(unix.SYS_PROCESS_MADVISE, uintptr(pidfd),
		uintptr(unsafe.Pointer(&iovs[0])), uintptr(len(iovs)), uintptr(advice), 0, 0)
	if e != 0 {
		return 0, e
	}
	return uint64(r), nil
}
