package fs

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestMountedAt: mountinfo escapes a mount point's spaces, tabs and
// backslashes (\040, \011, \134); mountedAt finds the point by its real
// name, reports the type of the mount on top, and nothing once it is gone.
func TestMountedAt(t *testing.T) {
	testenv.RequireRoot(t, "to mount a tmpfs")
	dir := filepath.Join(t.TempDir(), "a b\tc\\d")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok := mountedAt(dir); ok {
		t.Fatalf("%q is a mount point before any mount", dir)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	if fstype, ok := mountedAt(dir); !ok || fstype != "tmpfs" {
		t.Fatalf("after mounting a tmpfs on %q: %q, %v", dir, fstype, ok)
	}
	// A second mount on the same point hides the first: its type is the one reported.
	if err := unix.Mount("none", dir, "ramfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if fstype, ok := mountedAt(dir); !ok || fstype != "ramfs" {
		t.Fatalf("after stacking a ramfs on %q: %q, %v", dir, fstype, ok)
	}
	for range 2 {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Fatal(err)
		}
	}
	if fstype, ok := mountedAt(dir); ok {
		t.Fatalf("%q is still a mount point (%s) after unmounting", dir, fstype)
	}
	// The parent is a plain directory of the test's.
	if _, ok := mountedAt(filepath.Dir(dir)); ok {
		t.Errorf("the parent %q is reported as a mount point", filepath.Dir(dir))
	}
}
