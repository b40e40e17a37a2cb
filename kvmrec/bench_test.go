package kvmrec

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/durations"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

// Benchmarks. One op is one checkpoint; the figures that matter are the
// reported metrics, not ns/op. Run them with a fixed count, e.g.
//
//	go test ./kvmrec -run '^$' -bench Downtime -benchtime 40x
//	go test ./kvmrec -run '^$' -bench KeepUp -benchtime 6x
//
// Each reports a baseline measured in the same run: a bare stop+cont round
// trip to the same guest.

// benchInterval is the interval of the downtime benchmarks
// (CKPTFS_BENCH_INTERVAL overrides it).
var benchInterval = func() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("CKPTFS_BENCH_INTERVAL")); err == nil {
		return d
	}
	return 500 * time.Millisecond
}()

// minBenchCheckpoints is the fewest checkpoints a benchmark measures.
const minBenchCheckpoints = 10

type benchResult struct {
	mu     sync.Mutex
	stats  []CheckpointStats
	packed int // intervals with a working-set pack when the recording ended
}

func (r *benchResult) add(cs CheckpointStats) {
	r.mu.Lock()
	r.stats = append(r.stats, cs)
	r.mu.Unlock()
}

// ms returns the q-quantile of f over the checkpoints after the first, in
// milliseconds.
func (r *benchResult) ms(q float64, f func(CheckpointStats) time.Duration) float64 {
	var ds []time.Duration
	for _, cs := range r.stats[1:] {
		ds = append(ds, f(cs))
	}
	return float64(durations.Quantile(ds, q)) / float64(time.Millisecond)
}

func (r *benchResult) mean(f func(CheckpointStats) float64) float64 {
	var s float64
	for _, cs := range r.stats[1:] {
		s += f(cs)
	}
	return s / float64(len(r.stats)-1)
}

// bareStopCont measures stop+cont round trips to the guest (the floor of
// any pause) and returns the median in milliseconds.
func bareStopCont(b *testing.B, sock string, n int) float64 {
	ctx := context.Background()
	c, err := qmp.Dial(ctx, sock)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var ds []time.Duration
	for i := 0; i < n; i++ {
		t := time.Now()
		if err := c.Execute(ctx, "stop", nil, nil); err != nil {
			b.Fatal(err)
		}
		if err := c.Execute(ctx, "cont", nil, nil); err != nil {
			b.Fatal(err)
		}
		ds = append(ds, time.Since(t))
		time.Sleep(20 * time.Millisecond)
	}
	return float64(durations.Median(ds)) / float64(time.Millisecond)
}

func benchRecord(b *testing.B, gcfg synthguest.Config, cfg Config) *benchResult {
	b.Helper()
	g := startGuest(b, gcfg)
	base := bareStopCont(b, g.cfg.QMPSocket, 10)
	st := openStore(b, b.TempDir())
	defer st.Close()
	res := &benchResult{}
	cfg.Run = "bench"
	cfg.QMPSocket, cfg.MemPath = g.cfg.QMPSocket, g.cfg.MemPath
	// Checkpoint 0 is not measured, and a median wants several pauses
	// even at -benchtime 1x (make bench).
	cfg.Count = max(b.N, minBenchCheckpoints) + 1
	cfg.Logger = quietLogger()
	cfg.OnCheckpoint = res.add
	b.ResetTimer()
	if _, err := Record(context.Background(), st, cfg); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if len(res.stats) < 2 {
		b.Fatal("no checkpoint after checkpoint 0")
	}
	for i := 0; i < len(res.stats)-1; i++ {
		if ok, _ := st.HasPack(cfg.Run, i); ok {
			res.packed++
		}
	}
	b.ReportMetric(base, "bare-stop-cont-ms")
	return res
}

// BenchmarkDowntime: pause per checkpoint of a 256 MiB synthetic guest that
// touches 1 %, 5 % or 20 % of its frames per interval (half of them
// written), without device state; and at 5 % with device state and in exact
// mode. The no-precopy cases are the baseline of the pre-copy (the whole
// checkpoint taken in the pause); the spread cases keep the guest busy up to
// the stop, where pre-copy gains least.
func BenchmarkDowntime(b *testing.B) {
	for _, tc := range []struct {
		name      string
		ws        float64
		dev       bool
		exact     bool
		noPrecopy bool
		spread    bool // the guest spreads its accesses over the interval
	}{
		{"touch=1%", 0.01, false, false, false, false},
		{"touch=5%", 0.05, false, false, false, false},
		{"touch=20%", 0.20, false, false, false, false},
		{"touch=5%/device-state", 0.05, true, false, false, false},
		{"touch=5%/exact", 0.05, false, true, false, false},
		{"touch=5%/no-precopy", 0.05, false, false, true, false},
		{"touch=20%/no-precopy", 0.20, false, false, true, false},
		{"touch=5%/spread", 0.05, false, false, false, true},
		{"touch=5%/spread/no-precopy", 0.05, false, false, true, true},
		{"touch=5%/spread/exact", 0.05, false, true, false, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			gcfg := synthguest.Config{RAMSize: 256 << 20, WSFraction: tc.ws, DirtyFraction: tc.ws / 2,
				Locality: 0.25, Seed: 1}
			if tc.spread {
				// 16 frames every 2 ms: the interval's plan takes most
				// of the interval, so the VM is busy at the stop.
				gcfg.TickInterval, gcfg.TickFrames = 2*time.Millisecond, 16
			}
			res := benchRecord(b, gcfg,
				Config{Interval: benchInterval, DeviceState: tc.dev, ExactWorkingSets: tc.exact, NoPrecopy: tc.noPrecopy})
			down := func(cs CheckpointStats) time.Duration { return cs.Downtime }
			b.ReportMetric(res.ms(0.5, down), "median-ms")
			b.ReportMetric(res.ms(0.99, down), "p99-ms")
			b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.VMDowntime }), "vm-median-ms")
			b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.Phases.Scan }), "scan-ms")
			b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.Phases.Pageout }), "pageout-ms")
			b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.Phases.Pagemap }), "pagemap-ms")
			if tc.dev {
				b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.Phases.Device }), "device-wait-ms")
			}
			b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.Phases.Precopy }), "precopy-ms")
			b.ReportMetric(res.mean(func(cs CheckpointStats) float64 { return float64(cs.Precopied) }), "precopied-frames")
			b.ReportMetric(res.mean(func(cs CheckpointStats) float64 { return float64(cs.Copied) }), "pause-copied-frames")
			b.ReportMetric(res.mean(func(cs CheckpointStats) float64 { return float64(cs.Present) }), "present-frames")
			b.ReportMetric(res.mean(func(cs CheckpointStats) float64 { return float64(cs.ChangedFrames) }), "changed-frames")
		})
	}
}

// BenchmarkKeepUp: a 1 GiB guest writing 20 % of its frames per 1 s
// interval. The store must write and commit each checkpoint before the next
// boundary: store-ratio = store time / interval must stay below 1. With the
// pagemap tracker every written frame faults once per interval in the guest
// (it was unmapped), which on a slow machine keeps the synthetic guest below
// 20 %; the hash tracker leaves the guest alone, so it reaches 20 %.
func BenchmarkKeepUp(b *testing.B) {
	for _, tc := range []struct {
		tracker   string
		noPrecopy bool
		packLive  bool
	}{{TrackerPagemap, false, false}, {TrackerPagemap, true, false}, {TrackerHash, false, false}, {TrackerPagemap, false, true}} {
		name := "tracker=" + tc.tracker
		if tc.noPrecopy {
			name += "/no-precopy"
		}
		if tc.packLive {
			name += "/pack-live"
		}
		b.Run(name, func(b *testing.B) {
			const interval = time.Second
			res := benchRecord(b, synthguest.Config{RAMSize: 1 << 30, WSFraction: 0.2, DirtyFraction: 0.2, Locality: 0.25, Seed: 1},
				Config{Interval: interval, Tracker: tc.tracker, NoPrecopy: tc.noPrecopy, PackLive: tc.packLive})
			for _, cs := range res.stats {
				b.Logf("checkpoint %d: downtime %v scan %v changed %d new %d stored %d MiB store %v lagging %v",
					cs.Checkpoint, cs.Downtime.Round(time.Millisecond), cs.Phases.Scan.Round(time.Millisecond), cs.ChangedFrames,
					cs.NewFrames, cs.BytesStored>>20, cs.StoreTime.Round(time.Millisecond), cs.Lagging)
			}
			store := func(cs CheckpointStats) time.Duration { return cs.StoreTime }
			b.ReportMetric(res.ms(0.5, store)/float64(interval.Milliseconds()), "store-ratio-median")
			b.ReportMetric(res.ms(1, store)/float64(interval.Milliseconds()), "store-ratio-max")
			b.ReportMetric(res.ms(0.5, func(cs CheckpointStats) time.Duration { return cs.Downtime }), "downtime-median-ms")
			lag := 0.0
			for _, cs := range res.stats {
				if cs.Lagging {
					lag++
				}
			}
			b.ReportMetric(lag, "lagging-checkpoints")
			if tc.packLive {
				b.ReportMetric(float64(res.packed)/float64(len(res.stats)-1), "packed-live-fraction")
			}
			b.ReportMetric(res.mean(func(cs CheckpointStats) float64 { return float64(cs.ChangedFrames) }), "changed-frames")
			var bytes, ns float64
			for _, cs := range res.stats[1:] {
				bytes += float64(cs.BytesStored)
				ns += float64(cs.StoreTime)
			}
			b.ReportMetric(bytes/ns*1e9/(1<<20), "store-MiB/s")
		})
	}
}

// BenchmarkQEMUDeviceState: the real test guest (256 MiB, TCG) recorded
// without and with device state, alternately on the same VM; reports both
// median downtimes, their difference and the stream size.
func BenchmarkQEMUDeviceState(b *testing.B) {
	ctx := context.Background()
	g, _, _, _ := startQEMU(b, ctx)
	st := openStore(b, b.TempDir())
	defer st.Close()
	n := max(b.N, 5)
	var without, with []time.Duration
	var devBytes uint64
	for run, dev := range []bool{false, true, false, true} {
		res := &benchResult{}
		_, err := Record(ctx, st, Config{Run: "qemu" + string(rune('a'+run)), QMPSocket: g.Cfg.QMPSocket, MemPath: g.Cfg.MemPath,
			Interval: 300 * time.Millisecond, Count: n + 1, DeviceState: dev, Logger: quietLogger(), OnCheckpoint: res.add})
		if err != nil {
			b.Fatal(err)
		}
		for _, cs := range res.stats[1:] {
			if dev {
				with = append(with, cs.Downtime)
				devBytes = cs.DeviceStateBytes
			} else {
				without = append(without, cs.Downtime)
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(durations.Median(without)), "median-ms-without")
	b.ReportMetric(ms(durations.Median(with)), "median-ms-with")
	b.ReportMetric(ms(durations.Median(with)-durations.Median(without)), "device-state-cost-ms")
	b.ReportMetric(float64(devBytes), "device-state-bytes")
}

// BenchmarkQEMUWorkingSets: the real test guest recorded in the default mode
// and in exact mode, alternately on the same VM: mean working-set size and
// median downtime of each (the deferred frames' cost in precision on a
// workload that rewrites the same memory every tick).
func BenchmarkQEMUWorkingSets(b *testing.B) {
	ctx := context.Background()
	g, _, _, _ := startQEMU(b, ctx)
	st := openStore(b, b.TempDir())
	defer st.Close()
	n := max(b.N, 5)
	ws := map[bool][]float64{}
	down := map[bool][]time.Duration{}
	for run, exact := range []bool{false, true, false, true} {
		res := &benchResult{}
		_, err := Record(ctx, st, Config{Run: "ws" + string(rune('a'+run)), QMPSocket: g.Cfg.QMPSocket, MemPath: g.Cfg.MemPath,
			Interval: 300 * time.Millisecond, Count: n + 1, ExactWorkingSets: exact, Logger: quietLogger(), OnCheckpoint: res.add})
		if err != nil {
			b.Fatal(err)
		}
		for _, cs := range res.stats[1:] {
			ws[exact] = append(ws[exact], float64(cs.WorkingSet.GetCardinality()))
			down[exact] = append(down[exact], cs.Downtime)
		}
	}
	for _, exact := range []bool{false, true} {
		name := "default"
		if exact {
			name = "exact"
		}
		var sum float64
		for _, v := range ws[exact] {
			sum += v
		}
		b.ReportMetric(sum/float64(len(ws[exact])), "ws-frames-"+name)
		b.ReportMetric(float64(durations.Median(down[exact]))/float64(time.Millisecond), "median-ms-"+name)
	}
}
