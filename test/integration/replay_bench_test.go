package integration

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// benchGuestRAM is the RAM of the guest BenchmarkSparseReplays records,
// unless CKPTFS_BENCH_GUEST_RAM says otherwise (a QEMU -m value). Sparse
// replays save guest RAM, not QEMU's own ~50 MiB (binary, heap, translated
// code), so the memory ratio approaches W/RAM only for a guest whose RAM
// dwarfs that; 4 GiB is a small VM of those SimuBoost replays.
const benchGuestRAM = "4G"

// BenchmarkSparseReplays records the QEMU test guest deterministically from
// boot (6 checkpoints, 1 s apart) and replays every interval, 2 at a time,
// from <i>.ram and then from full/<i>.ram loaded whole, each verified
// against the next checkpoint (replay run --compare-full --precision). It
// reports the sparse/full ratios of the peak memory of the concurrent
// replays (whole QEMUs, and their guest-RAM mappings alone) and of the time
// to start replaying, beside the W/RAM they are measured against: the
// largest sum of the working sets of replays running together over the
// RAM of as many full replays (ws/ram; the goal: memory ≤ ws/ram + 0.02,
// mem-margin-pp ≥ 0; start time ≤ 0.11), and recall and precision of the
// working sets. A replay not verified, a working-set miss or a frame
// touched outside W_i fails the benchmark: they are errors, not figures.
func BenchmarkSparseReplays(b *testing.B) {
	testenv.RequireFUSE(b)
	testenv.RequireQEMU(b)
	ram := os.Getenv("CKPTFS_BENCH_GUEST_RAM")
	if ram == "" {
		ram = benchGuestRAM
	}
	art, err := qemuguest.Build(qemuguest.CacheDir())
	if err != nil {
		b.Fatalf("building the test guest: %v", err)
	}
	for n := 0; n < b.N; n++ {
		dir := b.TempDir()
		store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
		startMount(b, store, mnt)
		mustCkptfs(b, store, "record", "--run", "bench", "--deterministic", "--interval", "1s", "--count", "6", "--no-pack", "--",
			"-machine", "pc,accel=tcg", "-m", ram, "-nodefaults", "-no-user-config", "-display", "none",
			"-no-reboot", "-kernel", art.Kernel, "-initrd", art.Initrd,
			"-append", qemuguest.DefaultAppend, "-serial", "file:"+filepath.Join(dir, "serial.log"))
		report := filepath.Join(dir, "run.json")
		code, stdout, stderr := ckptfs(b, store, "replay", "run", "--mount", mnt, "--run", "bench", "--jobs", "2",
			"--compare-full", "--precision", "--deadline", "5m", "--json", report)
		b.Log("\n" + stdout)
		if code != 0 {
			b.Fatalf("replay run: exit %d: %s", code, stderr)
		}
		var rep struct {
			Sparse        benchPass `json:"sparse"`
			Full          benchPass `json:"full"`
			MemoryRatio   float64   `json:"memory_ratio"`
			GuestRAMRatio float64   `json:"guest_ram_ratio"`
			WSRatio       float64   `json:"ws_ratio"`
			PeakWSRatio   float64   `json:"peak_ws_ratio"`
			LoadRatio     float64   `json:"load_ratio"`
		}
		readJSON(b, report, &rep)
		if rep.Sparse.Verified < 4 || rep.Sparse.Verified != len(rep.Sparse.Intervals) || rep.Full.Verified != rep.Sparse.Verified {
			b.Fatalf("verified %d of %d sparse and %d full replays", rep.Sparse.Verified, len(rep.Sparse.Intervals), rep.Full.Verified)
		}
		if rep.Sparse.Misses != 0 || rep.Sparse.TouchedOutside != 0 {
			b.Errorf("recall below 100 %%: %d working-set misses, %d frames touched outside W_i", rep.Sparse.Misses, rep.Sparse.TouchedOutside)
		}
		if rep.MemoryRatio == 0 || rep.LoadRatio == 0 || rep.PeakWSRatio == 0 {
			b.Fatalf("no ratios in the report: %+v", rep)
		}
		b.ReportMetric(float64(rep.Sparse.Verified), "intervals")
		b.ReportMetric(rep.WSRatio, "ws/ram-mean")
		b.ReportMetric(rep.PeakWSRatio, "ws/ram")
		b.ReportMetric(rep.MemoryRatio, "mem-ratio")
		b.ReportMetric(rep.GuestRAMRatio, "guest-ram-ratio")
		b.ReportMetric(100*(rep.PeakWSRatio+0.02-rep.MemoryRatio), "mem-margin-pp")
		b.ReportMetric(rep.LoadRatio, "start-ratio")
		b.ReportMetric(float64(rep.Sparse.MeanLoad)/1e6, "sparse-start-ms")
		b.ReportMetric(float64(rep.Full.MeanLoad)/1e6, "full-start-ms")
		b.ReportMetric(rep.Sparse.MinPrecision, "precision-min")
		b.ReportMetric(rep.Sparse.MeanPrecision, "precision-mean")
		b.ReportMetric(float64(rep.Sparse.Misses), "misses")
	}
}

// benchPass is what BenchmarkSparseReplays reads of one pass of replay run.
type benchPass struct {
	Intervals      []struct{} `json:"intervals"`
	Verified       int        `json:"verified"`
	Misses         uint64     `json:"misses"`
	TouchedOutside uint64     `json:"touched_outside_ws"`
	MinPrecision   float64    `json:"min_precision"`
	MeanPrecision  float64    `json:"mean_precision"`
	MeanLoad       int64      `json:"mean_load_ns"`
}
