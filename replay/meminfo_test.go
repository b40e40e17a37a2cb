package replay

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestMemAvailable: MemAvailable is in bytes (not /proc/meminfo's kB):
// more than nothing and no more than the machine's RAM.
func TestMemAvailable(t *testing.T) {
	avail, err := memAvailable()
	if err != nil {
		t.Fatal(err)
	}
	var si unix.Sysinfo_t
	if err := unix.Sysinfo(&si); err != nil {
		t.Fatal(err)
	}
	total := uint64(si.Totalram) * uint64(si.Unit)
	if avail == 0 || avail > total {
		t.Fatalf("MemAvailable %d bytes, RAM %d bytes", avail, total)
	}
	// kB taken for bytes would be 1024 times too small: below 1/1024 of RAM.
	if avail < total/1024 {
		t.Errorf("MemAvailable %d bytes is under 1/1024 of RAM (%d bytes): a unit lost?", avail, total)
	}
}
