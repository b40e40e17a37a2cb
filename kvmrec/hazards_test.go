package kvmrec

import (
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestReclaimHazards(t *testing.T) {
	// Only reports: what is found depends on the machine.
	for _, h := range reclaimHazards() {
		t.Logf("hazard: %s", h)
	}
}

// TestMemFileHazard: RAM on tmpfs is fine; on a disk file system the
// recorder warns.
func TestMemFileHazard(t *testing.T) {
	shm, err := os.CreateTemp(shmDir(t), "ram")
	if err != nil {
		t.Fatal(err)
	}
	defer shm.Close()
	if h := memFileHazard(shm); h != "" {
		t.Errorf("tmpfs RAM file: %q", h)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(t.TempDir(), &st); err != nil || st.Type == unix.TMPFS_MAGIC {
		t.Skip("the temporary directory is on tmpfs here")
	}
	disk, err := os.CreateTemp(t.TempDir(), "ram")
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	if h := memFileHazard(disk); !strings.Contains(h, "tmpfs") {
		t.Errorf("RAM file on a disk file system: %q", h)
	}
}
