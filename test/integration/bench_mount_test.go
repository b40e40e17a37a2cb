package integration

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestReplayBenchOnMount runs `ckptfs replay bench` against a real mount of
// an imported run whose working sets are 20 % of RAM: the footprint of
// sparse eager (b) and lazy (c) loading must match |W| within 10 %, and
// full eager (a) the RAM size.
func TestReplayBenchOnMount(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	const frames = 16384 // 64 MiB
	// The next checkpoint differs in a tenth of the frames.
	dumps := writeRandomDumps(t, dir, 4, frames*index.PageSize, frames/10*index.PageSize)
	wsDir := filepath.Join(dir, "ws")
	os.Mkdir(wsDir, 0o700)
	var wsFrames []uint64
	for i := range dumps {
		// W_i: 20 % of the frames, in runs of 32 at random places.
		ws := roaring.New()
		for ws.GetCardinality() < frames/5 {
			var b [4]byte
			rand.Read(b[:])
			start := uint64(uint32(b[0])<<8|uint32(b[1])) % (frames - 32)
			ws.AddRange(start, start+32)
		}
		os.WriteFile(filepath.Join(wsDir, fmt.Sprintf("%d.ws", i)), []byte(index.FormatList(ws)), 0o600)
		wsFrames = append(wsFrames, ws.GetCardinality())
	}
	mustCkptfs(t, store, "import", "--run", "b", "--ws-dir", wsDir, dumps[0], dumps[1], dumps[2], dumps[3])
	startMount(t, store, mnt)

	report := filepath.Join(dir, "bench.json")
	mustCkptfs(t, store, "replay", "bench", "--mount", mnt, "--run", "b", "--concurrency", "1", "--json", report, "--plot", filepath.Join(dir, "bench.png"))
	data, err := os.ReadFile(report)
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		RAMSize uint64 `json:"ram_size"`
		Cache   string `json:"cache"`
		Results []struct {
			Mode          string `json:"mode"`
			Concurrency   int    `json:"concurrency"`
			Skipped       string `json:"skipped"`
			FootprintMean uint64 `json:"footprint_mean"`
			LoadMean      int64  `json:"load_mean_ns"`
		} `json:"results"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	// The bench found the mount's store through MNT/.status and emptied its
	// block cache before every batch.
	if rep.Cache != "cold (drop_caches + fadvise + store cache)" {
		t.Errorf("cache %q: the mount's store cache was not dropped", rep.Cache)
	}
	var meanWS float64
	for _, n := range wsFrames[:3] { // intervals 0..2 have working sets
		meanWS += float64(n*index.PageSize) / 3
	}
	within := func(got uint64, want float64) bool { return math.Abs(float64(got)-want) <= 0.1*want }
	seen := map[string]bool{}
	for _, r := range rep.Results {
		if r.Skipped != "" || r.Concurrency != 1 {
			continue
		}
		seen[r.Mode] = true
		t.Logf("%s: footprint %.1f MiB, load %.1f ms", r.Mode, float64(r.FootprintMean)/(1<<20), float64(r.LoadMean)/1e6)
		switch r.Mode {
		case "full":
			if !within(r.FootprintMean, float64(rep.RAMSize)) {
				t.Errorf("full eager footprint %d, RAM %d", r.FootprintMean, rep.RAMSize)
			}
		case "sparse", "lazy":
			if !within(r.FootprintMean, meanWS) {
				t.Errorf("%s footprint %d, |W| %.0f bytes", r.Mode, r.FootprintMean, meanWS)
			}
		}
	}
	for _, m := range []string{"full", "sparse", "lazy"} {
		if !seen[m] {
			t.Errorf("mode %s not measured: %s", m, data)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "bench.png")); err != nil || fi.Size() == 0 {
		t.Errorf("no plot: %v", err)
	}

	// --modes measures only the modes asked for; without (a) there are no
	// reductions and no floor.
	only := filepath.Join(dir, "only-c.json")
	mustCkptfs(t, store, "replay", "bench", "--mount", mnt, "--run", "b", "--concurrency", "1", "--modes", "c", "--json", only)
	data, err = os.ReadFile(only)
	if err != nil {
		t.Fatal(err)
	}
	var onlyRep struct {
		Results []struct {
			Mode          string   `json:"mode"`
			LoadReduction *float64 `json:"load_reduction"`
		} `json:"results"`
		Floor any `json:"floor"`
	}
	if err := json.Unmarshal(data, &onlyRep); err != nil {
		t.Fatal(err)
	}
	if len(onlyRep.Results) != 1 || onlyRep.Results[0].Mode != "lazy" || onlyRep.Results[0].LoadReduction != nil || onlyRep.Floor != nil {
		t.Errorf("--modes c: %s", data)
	}
	if code, _, stderr := ckptfs(t, store, "replay", "bench", "--mount", mnt, "--run", "b", "--modes", "e"); code != 2 ||
		strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, `unknown mode "e"`) {
		t.Errorf("--modes e: exit %d, stderr %q", code, stderr)
	}
}
