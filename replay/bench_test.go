package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/replay"
	"github.com/ckptfs/ckptfs/replay/replaytest"
)

func TestMain(m *testing.M) {
	replay.MaybeRunChild()
	os.Exit(m.Run())
}

const mib = 1 << 20

// within reports whether got is within frac of want.
func within(got, want uint64, frac float64) bool {
	return math.Abs(float64(got)-float64(want)) <= frac*float64(want)
}

// TestBenchSynthetic runs all four modes on a synthetic run whose working
// sets are 20 % of RAM and checks the footprints against the known sizes:
// (b) and (c) hold W_i, (a) holds all of RAM. The directory is not a FUSE
// mount, so (b) and (c) emulate the mount's prefetch. It drops only its own
// files' page cache: dropping the machine's caches a dozen times would hurt
// everybody else on it for a result that does not depend on it
// (TestBenchCold covers drop_caches). Warm, a mode would find the pages
// another mode read around, and mincore would count them.
func TestBenchSynthetic(t *testing.T) {
	mount := t.TempDir()
	const ram = 64 * mib
	syn, err := replaytest.WriteRun(mount, "syn", replaytest.Config{RAMSize: ram, Intervals: 3, WSFrac: 0.2, Seed: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rep, err := replay.Bench(ctx, replay.BenchConfig{
		Mount: mount, Run: "syn",
		// The plain directory has no prefetch either way; passing it as
		// the no-prefetch mount exercises mode (d).
		NoPrefetchMount: mount,
		Concurrency:     []int{1, 4},
		Drop:            replay.DropFiles,
	})
	if err != nil {
		t.Fatal(err)
	}
	var tbl bytes.Buffer
	if err := rep.Table(&tbl); err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", tbl.String())

	ws := uint64(syn.MeanWSFrac * ram)
	if rep.Cache != "cold per file (fadvise only)" {
		t.Errorf("cache %q", rep.Cache)
	}
	if !rep.PrefetchEmulated {
		t.Errorf("prefetch not emulated on a plain directory")
	}
	if !within(rep.MeanWSBytes, ws, 0.001) {
		t.Errorf("report mean W %d, written %d", rep.MeanWSBytes, ws)
	}
	if len(rep.Intervals) != 3 || rep.Intervals[0].DirtyFrames == 0 || !rep.Intervals[0].HasStats {
		t.Errorf("intervals %+v", rep.Intervals)
	}
	for _, k := range []int{1, 4} {
		for _, m := range replay.AllModes() {
			x, ok := rep.Result(m, k)
			if !ok || x.Skipped != "" {
				t.Fatalf("(%s) K=%d missing or skipped: %+v", m.Letter(), k, x)
			}
			want := ws
			if m == replay.ModeFull {
				want = ram
			}
			if m == replay.ModeLazyNoPrefetch {
				// Without prefetch the kernel's read-around on faults
				// caches holes next to W_i too: at least W_i, at most RAM.
				if x.FootprintMean < ws*9/10 || x.FootprintMean > ram {
					t.Errorf("(d) K=%d: footprint %s per replay, want between W %s and RAM",
						k, mb(x.FootprintMean), mb(ws))
				}
				continue
			}
			if !within(x.FootprintMean, want, 0.10) {
				t.Errorf("(%s) %s K=%d: footprint %s per replay, want %s ± 10 %%",
					m.Letter(), m.Describe(), k, mb(x.FootprintMean), mb(want))
			}
			if x.Replays < 3 || x.Replays%k != 0 || x.LoadMean <= 0 {
				t.Errorf("(%s) K=%d: %d replays, load %v", m.Letter(), k, x.Replays, x.LoadMean)
			}
			if m != replay.ModeFull && (x.FootprintReduction == nil || *x.FootprintReduction < 0.7) {
				t.Errorf("(%s) K=%d: footprint reduction %v", m.Letter(), k, x.FootprintReduction)
			}
		}
		// Eager copies add up; K replays of distinct intervals too.
		full, _ := rep.Result(replay.ModeFull, k)
		if !within(full.TotalFootprint, uint64(k)*ram, 0.10) {
			t.Errorf("(a) K=%d: total footprint %s, want %s", k, mb(full.TotalFootprint), mb(uint64(k)*ram))
		}
	}
	for _, s := range rep.Results[0].Samples {
		if s.Frames != ram/4096 || s.BytesRead != ram {
			t.Errorf("(a) sample %+v: want every frame read", s)
		}
	}

	// The floor is measured after (a) at K=1 and printed with the table.
	if f := rep.Floor; f == nil || f.WS <= 0 || f.RAM <= 0 {
		t.Errorf("floor %+v: want both fills measured", rep.Floor)
	} else {
		full, _ := rep.Result(replay.ModeFull, 1)
		if want := 1 - float64(f.WS)/float64(full.LoadMean); f.BestLoadReduction != want {
			t.Errorf("floor best reduction %v, want 1 - WS/(a) = %v", f.BestLoadReduction, want)
		}
		if !strings.Contains(tbl.String(), "floor: filling fresh memory") {
			t.Errorf("table lacks the floor line")
		}
	}

	data, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back replay.BenchReport
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Results) != len(rep.Results) || back.Results[1].FootprintMean != rep.Results[1].FootprintMean ||
		(rep.Floor != nil && (back.Floor == nil || *back.Floor != *rep.Floor)) {
		t.Errorf("JSON round trip lost results")
	}

	for _, name := range []string{"bench.png", "bench.svg"} {
		p := filepath.Join(t.TempDir(), name)
		if err := rep.WritePlot(p); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if name == "bench.png" && !bytes.HasPrefix(data, []byte("\x89PNG")) ||
			name == "bench.svg" && !bytes.Contains(data[:min(len(data), 512)], []byte("<svg")) {
			t.Errorf("%s: not a %s file (%d bytes)", name, filepath.Ext(name), len(data))
		}
	}
	if err := rep.WritePlot(filepath.Join(t.TempDir(), "bench.txt")); !errors.Is(err, replay.ErrBadConfig) {
		t.Errorf("WritePlot(.txt) = %v, want ErrBadConfig", err)
	}
}

func mb(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/mib) }

// TestBenchCold checks that a cold batch starts without the file in the
// page cache: lazy loading without prefetch then reads around its faults,
// and the page cache holds more than W_i. A warm file (just written, W_i
// cached, holes not) would show exactly W_i. One drop_caches, as root.
func TestBenchCold(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("dropping caches needs root")
	}
	mount := t.TempDir()
	const ram = 16 * mib
	syn, err := replaytest.WriteRun(mount, "c", replaytest.Config{RAMSize: ram, Intervals: 1, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	drops := 0
	rep, err := replay.Bench(context.Background(), replay.BenchConfig{Mount: mount, NoPrefetchMount: mount,
		Run: "c", Concurrency: []int{1}, Modes: []replay.Mode{replay.ModeLazyNoPrefetch},
		DropStore: func() error { drops++; return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	if rep.Cache != "cold (drop_caches + fadvise + store cache)" {
		t.Fatalf("cache %q", rep.Cache)
	}
	// Once when the bench starts, once before the warm-up's batch and once
	// before the measured one.
	if drops != 3 {
		t.Errorf("the store cache was dropped %d times, want 3", drops)
	}
	if !slices.ContainsFunc(rep.Notes, func(n string) bool { return strings.HasPrefix(n, "warm-up:") }) {
		t.Errorf("no warm-up note in %q", rep.Notes)
	}
	ws := uint64(syn.MeanWSFrac * ram)
	x, _ := rep.Result(replay.ModeLazyNoPrefetch, 1)
	if x.FootprintMean <= ws*11/10 || x.MajFltMean == 0 {
		t.Errorf("cold (d): page cache %s, %v major faults; want more than W %s (read-around)",
			mb(x.FootprintMean), x.MajFltMean, mb(ws))
	}
}

func TestBenchErrors(t *testing.T) {
	mount := t.TempDir()
	if _, err := replaytest.WriteRun(mount, "r", replaytest.Config{RAMSize: 4 * mib, Intervals: 1}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name string
		cfg  replay.BenchConfig
		want error
	}{
		{"no run", replay.BenchConfig{Mount: mount, Run: "nope"}, replay.ErrRunNotFound},
		{"bad run name", replay.BenchConfig{Mount: mount, Run: "../r"}, replay.ErrBadConfig},
		{"interval without ws", replay.BenchConfig{Mount: mount, Run: "r", Intervals: []int{1}}, replay.ErrNoWorkingSet},
		{"bad concurrency", replay.BenchConfig{Mount: mount, Run: "r", Concurrency: []int{0}}, replay.ErrBadConfig},
		{"bad mode", replay.BenchConfig{Mount: mount, Run: "r", Modes: []replay.Mode{"eager"}}, replay.ErrBadConfig},
		{"bad drop", replay.BenchConfig{Mount: mount, Run: "r", Drop: "some"}, replay.ErrBadConfig},
		// A binary that does not call MaybeRunChild gives no handshake.
		{"no handshake", replay.BenchConfig{Mount: mount, Run: "r", Executable: "/bin/true",
			Concurrency: []int{1}, Modes: []replay.Mode{replay.ModeSparse}}, replay.ErrChild},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := replay.Bench(ctx, c.cfg)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			t.Logf("%v", err)
		})
	}
}

func TestCheckConcurrency(t *testing.T) {
	if err := replay.CheckConcurrency([]int{1, 4, 16}); err != nil {
		t.Errorf("CheckConcurrency(1, 4, 16) = %v", err)
	}
	for _, bad := range [][]int{{0}, {1, -2}, {2000}} {
		if err := replay.CheckConcurrency(bad); !errors.Is(err, replay.ErrBadConfig) {
			t.Errorf("CheckConcurrency(%v) = %v", bad, err)
		}
	}
}

func TestParseMode(t *testing.T) {
	for in, want := range map[string]replay.Mode{"a": replay.ModeFull, "sparse": replay.ModeSparse,
		"C": replay.ModeLazy, "lazy-noprefetch": replay.ModeLazyNoPrefetch} {
		if got, err := replay.ParseMode(in); err != nil || got != want {
			t.Errorf("ParseMode(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := replay.ParseMode("e"); !errors.Is(err, replay.ErrBadConfig) {
		t.Errorf("ParseMode(e) = %v", err)
	}
}

func TestParseModes(t *testing.T) {
	if got, err := replay.ParseModes([]string{" a", "lazy "}); err != nil || fmt.Sprint(got) != "[full lazy]" {
		t.Errorf("ParseModes = %v, %v", got, err)
	}
	if got, err := replay.ParseModes(nil); err != nil || got != nil {
		t.Errorf("ParseModes(nil) = %v, %v; want nil: every mode", got, err)
	}
	for _, bad := range [][]string{{"e"}, {"a", "", "c"}, {"a", "x"}} {
		if _, err := replay.ParseModes(bad); !errors.Is(err, replay.ErrBadConfig) {
			t.Errorf("ParseModes(%q) = %v", bad, err)
		}
	}
}
