package fs

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
	"gonum.org/v1/gonum/stat"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/durations"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// Benchmarks compare the mount with a baseline measured in the same run and
// report the ratio (the median of per-iteration ratios, each against the
// baseline measured right before it); every page fault happens in a child
// process. The guest RAM size is 256 MiB, 1 GiB with CKPTFS_BENCH_BIG=1, or
// CKPTFS_BENCH_MB. Sources: "mem" (an in-memory Source: the mount's own
// cost) and "disk" (an on-disk index store with default options, the run
// packed as import and record leave it).

func benchFrames() uint64 {
	if v, err := strconv.Atoi(os.Getenv("CKPTFS_BENCH_MB")); err == nil && v > 0 {
		return uint64(v) << 20 / pageSize
	}
	if os.Getenv("CKPTFS_BENCH_BIG") == "1" {
		return 1 << 30 / pageSize
	}
	return 256 << 20 / pageSize
}

// benchData is one guest image (checkpoint 0) and its working set W_0, in
// a memory source and in an on-disk store, shared by the benchmarks of one
// test binary run.
type benchData struct {
	frames uint64
	image  []byte
	ws     *roaring.Bitmap
	wsList []uint32
	mem    *memSource
	store  *index.Store
	dir    string
	sparse string // <0>.ram materialised on tmpfs
	full   string // the image on tmpfs
	flat   string // the image on disk
}

var (
	benchOnce sync.Once
	bench     *benchData
	benchErr  error
)

// cleanupBench removes the shared benchmark files (from TestMain).
func cleanupBench() {
	if bench == nil {
		return
	}
	bench.store.Close()
	os.RemoveAll(bench.dir)
	os.Remove(bench.sparse)
	os.Remove(bench.full)
}

func getBench(b *testing.B) *benchData {
	b.Helper()
	testenv.RequireFUSE(b)
	benchOnce.Do(func() { bench, benchErr = newBenchData(benchFrames()) })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return bench
}

// newBenchData makes a guest image like a booted Linux guest's: 60% random
// frames, 15% one repeated frame, 25% zeros; W_0 is 25% of RAM in 64 KiB
// blocks (the pagemap tracker's fault-around granularity).
func newBenchData(frames uint64) (*benchData, error) {
	r := rand.New(rand.NewPCG(7, 11))
	d := &benchData{frames: frames, image: make([]byte, frames*pageSize), ws: roaring.New()}
	common := make([]byte, pageSize)
	fillRandom(r, common)
	for p := uint64(0); p < frames; p++ {
		fr := d.image[p*pageSize : (p+1)*pageSize]
		switch x := r.IntN(20); {
		case x < 12:
			fillRandom(r, fr)
		case x < 15:
			copy(fr, common)
		}
	}
	for blk := uint64(0); blk < frames/16; blk++ {
		if r.IntN(4) == 0 {
			d.ws.AddRange(blk*16, blk*16+16)
		}
	}
	d.wsList = d.ws.ToArray()
	d.mem = newMemSource()
	d.mem.add("mem", [][]byte{d.image, d.image}, []*roaring.Bitmap{d.ws}, nil)

	var err error
	if d.dir, err = os.MkdirTemp("", "ckptfs-bench-"); err != nil {
		return nil, err
	}
	if d.store, err = index.Open(filepath.Join(d.dir, "store"), index.Options{Create: true}); err != nil {
		return nil, err
	}
	// "disk" is the run as import and record leave it, with its
	// working-set pack; "unpacked" the same run without (--no-pack).
	for _, name := range []string{"disk", "unpacked"} {
		if err := d.writeRun(name); err != nil {
			return nil, err
		}
	}
	if _, err := d.store.PackRun(context.Background(), "disk"); err != nil {
		return nil, err
	}
	if err := d.store.Flush(); err != nil {
		return nil, err
	}

	// Baselines: the sparse image and the full image on tmpfs, the image
	// as a flat file on disk.
	sp, err := os.CreateTemp("/dev/shm", "ckptfs-bench-sparse-")
	if err != nil {
		return nil, err
	}
	defer sp.Close()
	d.sparse = sp.Name()
	if err := sp.Truncate(int64(frames * pageSize)); err != nil {
		return nil, err
	}
	for _, e := range extentsOf(d.ws) {
		if _, err := sp.WriteAt(d.image[e.start*pageSize:e.end*pageSize], int64(e.start*pageSize)); err != nil {
			return nil, err
		}
	}
	full, err := os.CreateTemp("/dev/shm", "ckptfs-bench-full-")
	if err != nil {
		return nil, err
	}
	d.full = full.Name()
	_, err = full.Write(d.image)
	full.Close()
	if err != nil {
		return nil, err
	}
	d.flat = filepath.Join(d.dir, "flat.img")
	if err := os.WriteFile(d.flat, d.image, 0o600); err != nil {
		return nil, err
	}
	return d, nil
}

// writeRun stores the image as checkpoints 0 and 1 of run name, with W_0.
func (d *benchData) writeRun(name string) error {
	w, err := d.store.CreateRun(index.RunSpec{Name: name, RAMSize: d.frames * pageSize, Recorder: "bench", Tracker: "bench"})
	if err != nil {
		return err
	}
	defer w.Close()
	zero := make([]byte, pageSize)
	for p := uint64(0); p < d.frames; p++ {
		fr := d.image[p*pageSize : (p+1)*pageSize]
		if string(fr) == string(zero) {
			continue
		}
		if err := w.Put(p, fr); err != nil {
			return err
		}
	}
	ctx := context.Background()
	if _, err := w.Commit(ctx, index.CommitInfo{}); err != nil {
		return err
	}
	_, err = w.Commit(ctx, index.CommitInfo{WorkingSet: d.ws})
	return err
}

// source returns the named source: "mem", or "disk" and "unpacked" (runs of
// the on-disk store).
func (d *benchData) source(name string) Source {
	if name == "mem" {
		return d.mem
	}
	return FromIndex(d.store)
}

// evict drops the kernel's page cache of a file of the mount (the mount's
// own notify, not a read of the file) once no push is running.
func (m *Server) evict(path ...string) {
	for m.Status().Prefetching > 0 {
		time.Sleep(time.Millisecond)
	}
	in := m.f.root.EmbeddedInode()
	for _, p := range path {
		if in = in.GetChild(p); in == nil {
			return
		}
	}
	in.NotifyContent(0, 0)
}

func touch(b *testing.B, file, list string, lat bool) touchResult {
	b.Helper()
	args := []string{file, list}
	if lat {
		args = append(args, "lat")
	}
	var res touchResult
	if err := json.Unmarshal([]byte(runChild(b, "touch", args...)), &res); err != nil {
		b.Fatal(err)
	}
	return res
}

// fill runs childFill over the frames of list.
func fill(b *testing.B, list string) touchResult {
	b.Helper()
	var res touchResult
	if err := json.Unmarshal([]byte(runChild(b, "fill", list)), &res); err != nil {
		b.Fatal(err)
	}
	return res
}

// pairedRatio is the median of a[i]/b[i]: each measurement against the
// baseline taken right before it, which cancels out slow phases of a shared
// machine.
func pairedRatio(a, b []time.Duration) float64 {
	r := make([]float64, len(a))
	for i := range a {
		r[i] = float64(a[i]) / float64(b[i])
	}
	sort.Float64s(r)
	return stat.Quantile(0.5, stat.Empirical, r, nil)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

// BenchmarkWSFaultIn: a child maps <0>.ram and touches every working-set
// frame in order; the time includes open (which starts the prefetch) and
// mmap. Baseline: the same touches on the same sparse image in tmpfs. The
// unpacked source is the store without the working-set pack. floor-ms is a
// child filling fresh anonymous memory with as many frames (childFill):
// what putting W into any cache costs at least, while the tmpfs baseline
// finds its pages allocated and filled; x-floor compares the mount to it.
func BenchmarkWSFaultIn(b *testing.B) {
	for _, src := range []string{"mem", "disk", "unpacked"} {
		for _, pf := range []string{"ws", "none"} {
			if src == "unpacked" && pf == "none" {
				continue // without prefetch the pack is not read
			}
			b.Run("src="+src+"/prefetch="+pf, func(b *testing.B) { benchWSFaultIn(b, src, pf) })
		}
	}
}

func benchWSFaultIn(b *testing.B, src, prefetch string) {
	d := getBench(b)
	srv, mnt := mountT(b, d.source(src), MountOptions{Prefetch: prefetch})
	run := src
	list := writeFile(b, b.TempDir(), "ws.pfns", pfnBytes(d.wsList))
	file := filepath.Join(mnt, run, "0.ram")
	var fuseT, baseT, pushT, floorT []time.Duration
	var faults int64
	var mu sync.Mutex
	srv.f.onPrefetched = func(d time.Duration) { mu.Lock(); pushT = append(pushT, d); mu.Unlock() }
	r0 := srv.Status().Reads
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		baseT = append(baseT, touch(b, d.sparse, list, false).Total)
		srv.evict(run, "0.ram")
		// After the evict, like the push: both then get pages the kernel
		// just freed. A VM with free page reporting may hand out
		// host-unbacked pages otherwise, at several times the cost.
		floorT = append(floorT, fill(b, list).Total)
		b.StartTimer()
		f0 := minorFaults()
		fuseT = append(fuseT, touch(b, file, list, false).Total)
		faults += minorFaults() - f0
	}
	// Page faults of this process (the mount) while the child faults in W:
	// fresh memory costs a trap per 4 KiB on a virtual machine.
	b.ReportMetric(float64(faults)/float64(b.N), "mount-faults/op")
	b.StopTimer()
	st := srv.Status()
	b.ReportMetric(float64(st.Reads-r0)/float64(b.N), "READs/op")
	mu.Lock()
	if len(pushT) > 0 {
		b.ReportMetric(ms(durations.Median(pushT)), "prefetch-ms")
	}
	mu.Unlock()
	b.ReportMetric(ms(durations.Median(fuseT)), "fuse-ms")
	b.ReportMetric(ms(durations.Median(baseT)), "tmpfs-ms")
	b.ReportMetric(pairedRatio(fuseT, baseT), "x-tmpfs")
	// The floor: filling fresh memory with W's frames, which any push into
	// the page cache must do and the pre-materialised baseline does not.
	b.ReportMetric(ms(durations.Median(floorT)), "floor-ms")
	b.ReportMetric(pairedRatio(floorT, baseT), "floor-x-tmpfs")
	b.ReportMetric(pairedRatio(fuseT, floorT), "x-floor")
	b.ReportMetric(float64(len(d.wsList)), "ws-frames")
	b.ReportMetric(float64(st.Misses)/float64(b.N), "misses/op")
}

// BenchmarkColdRandomFaults: without prefetch, a child touches one random
// frame (of W_0 in <0>.ram, of any in full/0.ram) in each 4 MiB region, in
// random order, so that no touch finds what an earlier one brought in, and
// times each fault. Baseline: the same touches on tmpfs.
func BenchmarkColdRandomFaults(b *testing.B) {
	for _, file := range []string{"sparse", "full"} {
		b.Run("file="+file, func(b *testing.B) { benchColdRandom(b, file) })
	}
}

func benchColdRandom(b *testing.B, kind string) {
	d := getBench(b)
	srv, mnt := mountT(b, d.source("disk"), MountOptions{Prefetch: "none"})
	r := rand.New(rand.NewPCG(3, 5))
	// One touch in the first MiB of every 4 MiB: a fault's 1 MiB
	// read-around never reaches another touch.
	const region, span = 4 << 20 / pageSize, 1 << 20 / pageSize
	var pfns []uint32
	for _, reg := range r.Perm(int(d.frames / region)) {
		lo := uint64(reg) * region
		if kind == "full" {
			pfns = append(pfns, uint32(lo+r.Uint64N(span)))
		} else if n := d.ws.CardinalityInRange(lo, lo+span); n > 0 {
			v, _ := d.ws.Select(uint32(d.ws.Rank(uint32(lo)) - boolU64(d.ws.Contains(uint32(lo))) + r.Uint64N(n)))
			pfns = append(pfns, v)
		}
		if len(pfns) == 200 {
			break
		}
	}
	path := []string{"disk", "0.ram"}
	base := d.sparse
	if kind == "full" {
		path = []string{"disk", "full", "0.ram"}
		base = d.full
	}
	list := writeFile(b, b.TempDir(), "rand.pfns", pfnBytes(pfns))
	file := filepath.Join(append([]string{mnt}, path...)...)
	var lat, baseLat []time.Duration
	r0 := srv.Status().Reads
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		baseLat = append(baseLat, touch(b, base, list, true).Lat...)
		srv.evict(path...)
		b.StartTimer()
		lat = append(lat, touch(b, file, list, true).Lat...)
	}
	b.StopTimer()
	b.ReportMetric(float64(srv.Status().Reads-r0)/float64(len(lat)), "READs/fault")
	b.ReportMetric(float64(durations.Quantile(lat, 0.5))/1e3, "p50-µs")
	b.ReportMetric(float64(durations.Quantile(lat, 0.99))/1e3, "p99-µs")
	b.ReportMetric(float64(durations.Quantile(baseLat, 0.5))/1e3, "tmpfs-p50-µs")
}

func boolU64(v bool) uint64 {
	if v {
		return 1
	}
	return 0
}

// BenchmarkSeqRead: `dd bs=1M` of full/0.ram. Cold: page caches dropped,
// against dd iflag=direct of the same bytes in a flat file. Warm: against
// dd of a copy on tmpfs.
func BenchmarkSeqRead(b *testing.B) {
	b.Run("cold", func(b *testing.B) { benchSeqRead(b, true) })
	b.Run("warm", func(b *testing.B) { benchSeqRead(b, false) })
}

func dd(b *testing.B, args ...string) time.Duration {
	b.Helper()
	start := time.Now()
	out, err := exec.Command("dd", append(args, "of=/dev/null", "bs=1M")...).CombinedOutput()
	if err != nil {
		b.Fatalf("dd %v: %v\n%s", args, err, out)
	}
	return time.Since(start)
}

func dropCaches(b *testing.B) {
	b.Helper()
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		b.Skipf("cannot drop caches: %v", err)
	}
}

func benchSeqRead(b *testing.B, cold bool) {
	d := getBench(b)
	reg := prometheus.NewRegistry()
	srv, mnt := mountT(b, d.source("disk"), MountOptions{Registry: reg, ReadaheadKB: envKB()})
	file := filepath.Join(mnt, "disk", "full", "0.ram")
	var fuseT, baseT []time.Duration
	var reads uint64
	var faults int64
	dd(b, "if="+file) // builds the frame map once
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if cold {
			dropCaches(b)
			baseT = append(baseT, dd(b, "if="+d.flat, "iflag=direct"))
			srv.evict("disk", "full", "0.ram")
			d.store.DropCache() // cold means the store's own cache too
			dropCaches(b)
		} else {
			baseT = append(baseT, dd(b, "if="+d.full))
			dd(b, "if="+file)
		}
		r0 := srv.Status().Reads
		b.StartTimer()
		f0 := minorFaults()
		fuseT = append(fuseT, dd(b, "if="+file))
		faults += minorFaults() - f0
		b.StopTimer()
		reads += srv.Status().Reads - r0
	}
	b.StopTimer()
	b.ReportMetric(float64(reads)/float64(b.N), "READs/op")
	b.ReportMetric(float64(faults)/float64(b.N), "mount-faults/op")
	if mfs, err := reg.Gather(); err == nil {
		for _, mf := range mfs {
			if mf.GetName() == "ckptfs_fs_read_seconds" {
				for _, m := range mf.GetMetric() {
					if h := m.GetHistogram(); h.GetSampleCount() > 0 {
						b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount())*1e3, "ms/READ")
					}
				}
			}
		}
	}
	size := float64(d.frames * pageSize)
	b.ReportMetric(size/durations.Median(fuseT).Seconds()/1e6, "fuse-MB/s")
	b.ReportMetric(size/durations.Median(baseT).Seconds()/1e6, "base-MB/s")
	b.ReportMetric(1/pairedRatio(fuseT, baseT), "x-of-base")
}

func BenchmarkWSWarm(b *testing.B) {
	d := getBench(b)
	_, mnt := mountT(b, d.source("mem"), MountOptions{Prefetch: "none"})
	list := writeFile(b, b.TempDir(), "ws.pfns", pfnBytes(d.wsList))
	file := filepath.Join(mnt, "mem", "0.ram")
	touch(b, file, list, false)
	var fuseT, baseT []time.Duration
	for range b.N {
		baseT = append(baseT, touch(b, d.sparse, list, false).Total)
		fuseT = append(fuseT, touch(b, file, list, false).Total)
	}
	b.ReportMetric(ms(durations.Median(fuseT)), "fuse-ms")
	b.ReportMetric(ms(durations.Median(baseT)), "tmpfs-ms")
}

// envKB is the mount's readahead for BenchmarkSeqRead
// (CKPTFS_BENCH_RA_KB; default 1024).
func envKB() int {
	v, _ := strconv.Atoi(os.Getenv("CKPTFS_BENCH_RA_KB"))
	return v
}

// minorFaults is this process's minor page faults so far.
func minorFaults() int64 {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return ru.Minflt
}
