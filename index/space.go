package index

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// spareBytes is the free space a commit leaves on the store's file system.
// Pebble treats a failed write of its log or MANIFEST as fatal (the
// process ends), so a commit that would leave less than this fails first,
// with ENOSPC, and everything committed before it stays readable.
const spareBytes = 4 << 20

// checkSpace fails with an error wrapping ENOSPC when writing need more
// bytes would leave less than spareBytes free where the store lives.
// Stores on a vfs of the caller's (tests, in memory) are not checked.
func (s *Store) checkSpace(need uint64) error {
	if s.opts.InMemory || s.opts.FS != nil {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(s.dir, &st); err != nil {
		return nil // the write itself will tell
	}
	free := st.Bavail * uint64(st.Bsize)
	if free < need+spareBytes {
		return fmt.Errorf("store %s: %w: %d MiB free, and a commit of %d KiB must leave %d MiB for the store's log",
			s.dir, syscall.ENOSPC, free>>20, need>>10, spareBytes>>20)
	}
	return nil
}
