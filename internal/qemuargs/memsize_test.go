package qemuargs

import "testing"

func TestMemSize(t *testing.T) {
	for in, want := range map[string]uint64{
		"256": 256 << 20, "256M": 256 << 20, "1G": 1 << 30, "1g": 1 << 30, "512k": 512 << 10,
		"size=2G,slots=2,maxmem=8G": 2 << 30, "4096B": 4096,
	} {
		if got, err := MemSize(in); err != nil || got != want {
			t.Errorf("MemSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "M", "x", "slots=2", "-1G", "0"} {
		if got, err := MemSize(bad); err == nil {
			t.Errorf("MemSize(%q) = %d, want an error", bad, got)
		}
	}
}
