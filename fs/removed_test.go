package fs

import (
	"fmt"
	"syscall"
	"testing"

	"github.com/ckptfs/ckptfs/index"
)

// TestRemovedRunErrno: a read of a run removed while its file was open is
// ENOENT, which fail neither logs nor counts: a removed run is not damage.
func TestRemovedRunErrno(t *testing.T) {
	err := fmt.Errorf("reading frames: %w", index.ErrRunRemoved)
	if e := errno(err); e != syscall.ENOENT {
		t.Fatalf("errno of a removed run's read: %v, want ENOENT", e)
	}
}
