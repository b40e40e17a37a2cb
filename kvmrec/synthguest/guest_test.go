package synthguest

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func TestPlan(t *testing.T) {
	g := &guest{cfg: Config{WSFraction: 0.1, DirtyFraction: 0.04, Locality: 0.5, Seed: 9}, frames: 1000}
	a, b := g.plan(3), g.plan(3)
	if len(a) != 100 || len(a) != len(b) {
		t.Fatalf("plan has %d operations, want 100", len(a))
	}
	seen := map[uint32]bool{}
	writes := 0
	for i := range a {
		if a[i] != b[i] {
			t.Fatal("plans of the same interval differ")
		}
		if seen[a[i].pfn] {
			t.Fatalf("frame %d twice in a plan", a[i].pfn)
		}
		seen[a[i].pfn] = true
		if a[i].write {
			writes++
		}
	}
	if writes != 40 {
		t.Fatalf("%d writes, want 40", writes)
	}
	if c := g.plan(4); c[0] == a[0] && c[1] == a[1] && c[2] == a[2] {
		t.Error("plans of different intervals look the same")
	}
	// A write always changes the frame, also when it clears it.
	g.cfg.RAMSize = 1000 * pageSize
	g.ram = make([]byte, g.cfg.RAMSize)
	g.initRAM()
	for k := 0; k < 200; k++ {
		o := op{pfn: uint32(k % 1000), write: true}
		before := append([]byte(nil), g.ram[int(o.pfn)*pageSize:(int(o.pfn)+1)*pageSize]...)
		g.access(k, o)
		if bytes.Equal(before, g.ram[int(o.pfn)*pageSize:(int(o.pfn)+1)*pageSize]) {
			t.Fatalf("write %d left frame %d unchanged", k, o.pfn)
		}
	}
}

func TestMainUsage(t *testing.T) {
	for _, args := range [][]string{{}, {"-mem", "x"}, {"-mem", "x", "-qmp", "y", "-ram-size", "12Q"}, {"-bogus"}} {
		if code := mainTo(args, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	for in, want := range map[string]uint64{"4096": 4096, "64M": 64 << 20, "1G": 1 << 30, "256MiB": 256 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v", in, got, err)
		}
	}
	if !strings.HasPrefix(string(DeviceState(7, 3)), "CKPTFS-SYNTHGUEST-DEVICE-STATE pause=3 seed=7\n") {
		t.Error("device state header")
	}
}
