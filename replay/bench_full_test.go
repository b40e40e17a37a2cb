package replay_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/replay"
	"github.com/ckptfs/ckptfs/replay/replaytest"
)

// TestBenchSyntheticFull is the full load/footprint evaluation on a synthetic run: 256
// MiB of RAM, W_i = 20 % of the frames in runs of CKPTFS_BENCH_RUN_FRAMES
// (default 256), 4 intervals, K = 1, 4, 16. It takes a minute and 4 GiB, so
// it runs only with CKPTFS_BENCH_FULL=1; it writes bench.json and bench.png
// into CKPTFS_BENCH_OUT when set.
func TestBenchSyntheticFull(t *testing.T) {
	if os.Getenv("CKPTFS_BENCH_FULL") != "1" {
		t.Skip("set CKPTFS_BENCH_FULL=1 to run the full synthetic bench")
	}
	runFrames, _ := strconv.Atoi(os.Getenv("CKPTFS_BENCH_RUN_FRAMES"))
	mount := t.TempDir()
	if _, err := replaytest.WriteRun(mount, "syn", replaytest.Config{RAMSize: 256 * mib, Intervals: 4,
		WSFrac: 0.2, RunFrames: runFrames, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	rep, err := replay.Bench(ctx, replay.BenchConfig{Mount: mount, Run: "syn", NoPrefetchMount: mount})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("\n%s", rep)
	if out := os.Getenv("CKPTFS_BENCH_OUT"); out != "" {
		var buf bytes.Buffer
		if err := rep.WriteJSON(&buf); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(out, "bench.json"), buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := rep.WritePlot(filepath.Join(out, "bench.png")); err != nil {
			t.Fatal(err)
		}
	}
}
