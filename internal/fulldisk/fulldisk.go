package fulldisk

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testenv"
)

// Mount mounts a tmpfs of size (tmpfs syntax: "48m") in a directory of the
// test's own and returns that directory. Mounting needs root
// (testenv.RequireRoot).
func Mount(t testing.TB, size string) string {
	t.Helper()
	testenv.RequireRoot(t, "to mount a small tmpfs")
	dir := filepath.Join(t.TempDir(), "small")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	// Cleanups run last-in first-out: this one before TempDir's removal.
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
