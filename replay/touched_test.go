package replay

import (
	"encoding/binary"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func counters(frames int, touched ...uint64) []byte {
	b := make([]byte, frames*8)
	for _, p := range touched {
		binary.LittleEndian.PutUint64(b[p*8:], 3)
	}
	return b
}

func TestCompareTouched(t *testing.T) {
	ws := []frameRun{{Start: 2, Count: 3}, {Start: 10, Count: 1}, {Start: 14, Count: 2}} // 2-4,10,14-15: 6 frames
	for _, tc := range []struct {
		name         string
		touched      []uint64
		in, out      uint64
		precision    float64
		firstOutside []uint64
	}{
		{"none", nil, 0, 0, 0, nil},
		{"all of W", []uint64{2, 3, 4, 10, 14, 15}, 6, 0, 1, nil},
		{"half of W", []uint64{2, 4, 15}, 3, 0, 0.5, nil},
		{"edges outside", []uint64{0, 1, 5, 9, 11, 13, 16, 3}, 1, 7, 1.0 / 6, []uint64{0, 1, 5, 9, 11, 13, 16}},
	} {
		r, err := compareTouched(counters(17, tc.touched...), ws, 6)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Frames != uint64(len(tc.touched)) || r.InWS != tc.in || r.OutsideWS != tc.out || r.Precision != tc.precision ||
			!slices.Equal(r.FirstOutside, tc.firstOutside) || r.WSFrames != 6 {
			t.Errorf("%s: %+v; want in %d, outside %d %v, precision %v", tc.name, r, tc.in, tc.out, tc.firstOutside, tc.precision)
		}
	}
	// The list of frames outside is bounded, the count is not.
	many := make([]uint64, 0, 40)
	for p := uint64(20); p < 60; p++ {
		many = append(many, p)
	}
	r, err := compareTouched(counters(64, many...), ws, 6)
	if err != nil || r.OutsideWS != 40 || len(r.FirstOutside) != maxOutsideListed || r.FirstOutside[0] != 20 {
		t.Errorf("40 frames outside: %+v, %v", r, err)
	}
	if _, err := compareTouched(make([]byte, 12), ws, 6); err == nil || !strings.Contains(err.Error(), "8-byte") {
		t.Errorf("12 bytes: %v; want an error about 8-byte counters", err)
	}
}

func TestTouchCountersFile(t *testing.T) {
	dir := t.TempDir()
	c, err := newTouchCounters(dir, 32)
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(c.path); err != nil || fi.Size() != (32+touchTrailerWords)*8 {
		t.Fatalf("counters file: %v, %v; want %d bytes", fi, err, (32+touchTrailerWords)*8)
	}
	// The trailer (the plugin's own words) is not frames.
	data := append(counters(32, 1, 7), 9, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0)
	if err := os.WriteFile(c.path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := c.report([]frameRun{{Start: 7, Count: 4}}, 4)
	if err != nil || r.InWS != 1 || r.OutsideWS != 1 || r.Precision != 0.25 {
		t.Errorf("report: %+v, %v", r, err)
	}
	if err := os.WriteFile(c.path, make([]byte, 100), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.report(nil, 0); err == nil {
		t.Error("a counters file of the wrong size was read")
	}
	arg := c.pluginArg("/x/ckptfs-ws.so", "/m,nt/r/3.ram")
	want := "/x/ckptfs-ws.so,ram=/m,,nt/r/3.ram,counters=" + filepath.Join(dir, "touched.counters") + ",mem=on,wp=off,random=on"
	if arg != want {
		t.Errorf("pluginArg: %q, want %q", arg, want)
	}
	if _, err := newTouchCounters(dir, 32); err == nil {
		t.Error("a second counters file in the same directory was created over the first")
	}
}

// A pass's precision counts only the replays that reached the next
// checkpoint (one that spun touched part of W_I); frames touched outside
// W_I count for every replay, and the table shows both.
func TestPassPrecision(t *testing.T) {
	p := PassReport{Source: "sparse", Wall: time.Second, Intervals: []IntervalReport{
		{Interval: 0, Verdict: VerdictVerified, TargetICount: 5, ReachedICount: 5, Touched: &TouchReport{Precision: 0.99, WSFrames: 100, InWS: 99}},
		{Interval: 1, Verdict: VerdictDiverged, TargetICount: 9, ReachedICount: 9, Touched: &TouchReport{Precision: 0.95, OutsideWS: 2, FirstOutside: []uint64{7, 8}}},
		{Interval: 2, Verdict: VerdictTimeout, TargetICount: 12, Touched: &TouchReport{Precision: 0.1, OutsideWS: 1, FirstOutside: []uint64{3}}},
		{Interval: 3, Verdict: VerdictFailed, TargetICount: 15},
	}}
	p.total()
	if p.Touched != 2 || p.MinPrecision != 0.95 || math.Abs(p.MeanPrecision-0.97) > 1e-9 || p.TouchedOutside != 3 || p.Verified != 1 || p.AllVerified {
		t.Errorf("pass: %d touched, min %v, mean %v, outside %d, verified %d", p.Touched, p.MinPrecision, p.MeanPrecision, p.TouchedOutside, p.Verified)
	}
	var b strings.Builder
	rep := RunReport{Run: "r", Jobs: 2, Sparse: p}
	if err := rep.Table(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"precision ≥", "outside W", "99.0 %", "10.0 %", "of the 2 replays that reached the next checkpoint: min 95.0 %, mean 97.0 %; frames touched outside W_I 3"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := p.Intervals[1].Table(&b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "≥ 95.0 %") || !strings.Contains(b.String(), "2 (first pfns 0x7,0x8)") {
		t.Errorf("interval table:\n%s", b.String())
	}
}
