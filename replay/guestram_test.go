package replay

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestGuestRAMRss: the resident part of a mapped .ram file under the mount
// is counted, other mappings are not.
func TestGuestRAMRss(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "3.ram")
	if err := os.WriteFile(path, make([]byte, 64<<12), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 64<<12, unix.PROT_READ, unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(m)
	var sum byte
	for p := 0; p < 16; p++ {
		sum += m[p<<12]
	}
	touchSink = sum // keeps the loads that fault the pages in
	got, ok := guestRAMRss(os.Getpid(), dir)
	if !ok || got < 16<<12 || got > 64<<12 {
		t.Fatalf("guest RAM RSS %d (%v), want between 16 and 64 pages", got, ok)
	}
	if other, _ := guestRAMRss(os.Getpid(), t.TempDir()); other != 0 {
		t.Fatalf("a mount with no mapped .ram file: %d bytes", other)
	}
}

var touchSink byte
