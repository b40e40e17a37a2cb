package index

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// Benchmarks of the store. Each reports a ratio against a baseline measured
// in the same run (dd on the same disk), never an absolute time. The series
// size is CKPTFS_BENCH_MIB (default 1024: a 1 GiB series).

func benchMiB() int {
	if v, err := strconv.Atoi(os.Getenv("CKPTFS_BENCH_MIB")); err == nil && v > 0 {
		return v
	}
	return 1024
}

// makeSeries writes n dumps of size bytes that look like guest RAM: a third
// zero frames, some text-like (compressible) frames, random frames, and
// repeats; each next dump changes 20 % of the frames.
func makeSeries(tb testing.TB, dir string, n int, size int) []string {
	tb.Helper()
	os.MkdirAll(dir, 0o700)
	rng := rand.New(rand.NewPCG(uint64(size), 42))
	frames := size / PageSize
	img := make([]byte, size)
	text := []byte("the quick brown fox jumps over the lazy dog; mov rax, [rbp-8]; call 0x401000\n")
	fill := func(p int) {
		f := img[p*PageSize : (p+1)*PageSize]
		switch k := rng.IntN(10); {
		case k < 3:
			clear(f)
		case k < 6:
			for i := 0; i < PageSize; i += len(text) {
				copy(f[i:], text)
			}
			f[rng.IntN(PageSize)] = byte(rng.IntN(256))
		case k < 7 && p > 0:
			q := rng.IntN(frames)
			copy(f, img[q*PageSize:(q+1)*PageSize])
		default:
			for i := 0; i < PageSize; i += 8 {
				v := rng.Uint64()
				for j := 0; j < 8; j++ {
					f[i+j] = byte(v >> (8 * j))
				}
			}
		}
	}
	for p := 0; p < frames; p++ {
		fill(p)
	}
	var paths []string
	for i := 0; i < n; i++ {
		if i > 0 {
			for c := 0; c < frames/5; c++ {
				fill(rng.IntN(frames))
			}
		}
		p := filepath.Join(dir, fmt.Sprintf("dump%d", i))
		if err := os.WriteFile(p, img, 0o600); err != nil {
			tb.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

func dd(tb testing.TB, args ...string) time.Duration {
	tb.Helper()
	start := time.Now()
	out, err := exec.Command("dd", append(args, "bs=1M", "status=none")...).CombinedOutput()
	if err != nil {
		tb.Fatalf("dd %v: %v: %s", args, err, out)
	}
	return time.Since(start)
}

func dropCaches() {
	_ = exec.Command("sync").Run()
	_ = os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
}

func concat(tb testing.TB, dumps []string, out string) {
	f, err := os.Create(out)
	if err != nil {
		tb.Fatal(err)
	}
	for _, d := range dumps {
		data, _ := os.ReadFile(d)
		f.Write(data)
	}
	f.Close()
}

// BenchmarkIngest imports a 1 GiB series (4 dumps) and compares the
// throughput with dd writing the same bytes with oflag=direct.
func BenchmarkIngest(b *testing.B) {
	dir := b.TempDir()
	size := benchMiB() << 20
	dumps := makeSeries(b, dir, 4, size/4)
	flat := filepath.Join(dir, "flat")
	concat(b, dumps, flat)
	var ours, buffered, base time.Duration
	importOnce := func(i int, opts Options) time.Duration {
		store := filepath.Join(dir, fmt.Sprintf("store%d", i))
		opts.Create = true
		st, err := Open(store, opts)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := st.Import(context.Background(), ImportSpec{Run: "bench", Dumps: dumps}); err != nil {
			b.Fatal(err)
		}
		took := time.Since(start)
		st.Close()
		os.RemoveAll(store)
		return took
	}
	for i := 0; i < b.N; i++ {
		base += dd(b, "if="+flat, "of="+filepath.Join(dir, "ddout"), "oflag=direct")
		os.Remove(filepath.Join(dir, "ddout"))
		ours += importOnce(i, Options{})
		// The same import with frame tables written through the page
		// cache: the baseline of direct.go's choice.
		buffered += importOnce(i, Options{BufferedTables: true})
	}
	b.ReportMetric(float64(base)/float64(ours), "ratio_vs_dd")
	b.ReportMetric(float64(buffered)/float64(ours), "speedup_vs_buffered")
	b.ReportMetric(float64(size)*float64(b.N)/ours.Seconds()/(1<<20), "MiB/s")
	b.ReportMetric(float64(size)*float64(b.N)/base.Seconds()/(1<<20), "dd_MiB/s")
}

// BenchmarkResolve exports the newest 1 GiB checkpoint of a series from a
// freshly reopened store with cold caches and compares with dd reading the
// same image from a flat file with iflag=direct.
func BenchmarkResolve(b *testing.B) {
	dir := b.TempDir()
	size := benchMiB() << 20
	dumps := makeSeries(b, dir, 3, size)
	store := filepath.Join(dir, "store")
	bs, _ := strconv.Atoi(os.Getenv("CKPTFS_BENCH_BLOCK_KIB"))
	st, err := Open(store, Options{Create: true, Compression: os.Getenv("CKPTFS_BENCH_COMPRESSION"), BlockSize: bs << 10})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.Import(context.Background(), ImportSpec{Run: "bench", Dumps: dumps}); err != nil {
		b.Fatal(err)
	}
	st.Close()
	var ours, base time.Duration
	for i := 0; i < b.N; i++ {
		dropCaches()
		base += dd(b, "if="+dumps[2], "of=/dev/null", "iflag=direct")
		dropCaches()
		start := time.Now()
		st, err := Open(store, Options{})
		if err != nil {
			b.Fatal(err)
		}
		// Like dd's of=/dev/null: measure resolving and reading, not the
		// output file system.
		if err := st.Export(context.Background(), ExportSpec{Run: "bench", Interval: 2, Out: os.DevNull}); err != nil {
			b.Fatal(err)
		}
		ours += time.Since(start)
		st.Close()
	}
	b.ReportMetric(float64(base)/float64(ours), "ratio_vs_dd")
	b.ReportMetric(float64(size)*float64(b.N)/ours.Seconds()/(1<<20), "MiB/s")
	b.ReportMetric(float64(size)*float64(b.N)/base.Seconds()/(1<<20), "dd_MiB/s")
}

// BenchmarkScale compares the cost of reading one random frame at the newest
// checkpoint of a run of 10 checkpoints with a run of 10,000 checkpoints,
// both with the same 4096 live frames. The headline ratio is the mount's read
// path (ReadFrames: the checkpoint's frame map, built once per open, then one
// blob read); point_ratio is ReadFrame, which seeks the version each time
// without a map; map_build_us is the one-time cost of the map.
func BenchmarkScale(b *testing.B) {
	const live = 4096
	dir := b.TempDir()
	bs, _ := strconv.Atoi(os.Getenv("CKPTFS_BENCH_BLOCK_KIB"))
	st, err := Open(filepath.Join(dir, "store"), Options{Create: true, BlockSize: bs << 10})
	if err != nil {
		b.Fatal(err)
	}
	build := func(name string, checkpoints int) {
		rng := rand.New(rand.NewPCG(uint64(checkpoints), 1))
		w, err := st.CreateRun(RunSpec{Name: name, RAMSize: live * PageSize})
		if err != nil {
			b.Fatal(err)
		}
		frame := make([]byte, PageSize)
		for c := 0; c < checkpoints; c++ {
			// Checkpoint 0 writes every frame; later ones rewrite 16.
			for p := 0; p < live; p++ {
				if c > 0 && rng.IntN(live) >= 16 {
					continue
				}
				for i := 0; i < PageSize; i += 512 {
					frame[i] = byte(rng.Uint32())
				}
				if err := w.Put(uint64(p), frame); err != nil {
					b.Fatal(err)
				}
			}
			if _, err := w.Commit(context.Background(), CommitInfo{}); err != nil {
				b.Fatal(err)
			}
		}
		w.Close()
	}
	build("short", 10)
	build("long", 10000)
	// A finished run is compacted for reads (RunWriter.Close starts it);
	// measure the settled store, not the compaction debt of the writes.
	for _, name := range []string{"short", "long"} {
		if err := st.CompactRun(context.Background(), name); err != nil {
			b.Fatal(err)
		}
	}
	st.Close()
	cache, _ := strconv.ParseInt(os.Getenv("CKPTFS_BENCH_CACHE_MIB"), 10, 64)
	st, err = Open(filepath.Join(dir, "store"), Options{CacheSize: cache << 20, BlockSize: bs << 10})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	open := func(name string, checkpoints int) *Checkpoint {
		c, err := st.OpenCheckpoint(name, checkpoints-1)
		if err != nil {
			b.Fatal(err)
		}
		return c
	}
	cs, cl := open("short", 10), open("long", 10000)
	defer cs.Close()
	defer cl.Close()
	// The mount's path: ReadFrames on a checkpoint whose frame map is built
	// once when first read. Time that build too.
	var mapShort, mapLong time.Duration
	for _, x := range []struct {
		c *Checkpoint
		d *time.Duration
	}{{cs, &mapShort}, {cl, &mapLong}} {
		start := time.Now()
		if _, err := x.c.DataFrames(); err != nil {
			b.Fatal(err)
		}
		*x.d = time.Since(start)
	}
	buf := make([]byte, PageSize)
	reads := func(c *Checkpoint, point bool, rng *rand.Rand, n int) time.Duration {
		start := time.Now()
		for i := 0; i < n; i++ {
			p := uint64(rng.IntN(live))
			var err error
			if point {
				err = c.readFrame(p, buf)
			} else {
				err = c.ReadFrames(p, buf)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	// Interleaved rounds, so that both runs see the same machine: on a
	// shared host the load changes faster than one long measurement.
	const rounds, perRound = 20, 10000
	var short, long, pshort, plong time.Duration
	for i := 0; i < b.N; i++ {
		rngs := make([]*rand.Rand, 4)
		for k := range rngs {
			rngs[k] = rand.New(rand.NewPCG(9, 9))
		}
		for k, c := range []*Checkpoint{cs, cl, cs, cl} {
			reads(c, k >= 2, rngs[k], perRound) // warm all the same way
		}
		for r := 0; r < rounds; r++ {
			short += reads(cs, false, rngs[0], perRound) / (rounds * perRound)
			long += reads(cl, false, rngs[1], perRound) / (rounds * perRound)
			pshort += reads(cs, true, rngs[2], perRound) / (rounds * perRound)
			plong += reads(cl, true, rngs[3], perRound) / (rounds * perRound)
		}
	}
	b.ReportMetric(float64(long)/float64(short), "ratio_10k_vs_10")
	b.ReportMetric(float64(short.Nanoseconds())/float64(b.N), "ns/read_10")
	b.ReportMetric(float64(long.Nanoseconds())/float64(b.N), "ns/read_10k")
	b.ReportMetric(float64(plong)/float64(pshort), "point_ratio_10k_vs_10")
	b.ReportMetric(float64(mapShort.Microseconds()), "map_build_us_10")
	b.ReportMetric(float64(mapLong.Microseconds()), "map_build_us_10k")
}

// BenchmarkSpace reports bytes on disk per checkpoint against the raw size
// of the changed frames, with and without dedup and compression.
func BenchmarkSpace(b *testing.B) {
	dir := b.TempDir()
	size := benchMiB() << 20
	dumps := makeSeries(b, dir, 4, size/4)
	for _, cfg := range []struct {
		name string
		opts Options
	}{
		{"dedup+snappy", Options{}},
		{"dedup+zstd", Options{Compression: "zstd"}},
		{"dedup+none", Options{Compression: "none"}},
		{"nodedup+none", Options{Compression: "none", NoDedup: true}},
	} {
		b.Run(cfg.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				store := filepath.Join(dir, "space-"+cfg.name)
				o := cfg.opts
				o.Create = true
				st, err := Open(store, o)
				if err != nil {
					b.Fatal(err)
				}
				ri, err := st.Import(context.Background(), ImportSpec{Run: "s", Dumps: dumps})
				if err != nil {
					b.Fatal(err)
				}
				var changed uint64
				for c := 0; c < ri.Checkpoints; c++ {
					cs, _ := st.CheckpointStats("s", c)
					changed += cs.ChangedFrames
				}
				st.Close()
				disk := dirSize(store)
				b.ReportMetric(float64(disk)/float64(ri.Checkpoints)/(1<<20), "MiB_disk/ckpt")
				b.ReportMetric(float64(changed*PageSize)/float64(ri.Checkpoints)/(1<<20), "MiB_changed/ckpt")
				b.ReportMetric(float64(disk)/float64(changed*PageSize), "disk/changed")
				os.RemoveAll(store)
			}
		})
	}
}

func dirSize(dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}

// BenchmarkReadFrames reads a checkpoint sequentially in 1 MiB requests, as
// the mount does for a sequential read of full/<i>.ram, warm, against a
// memcpy of the same bytes from memory.
func BenchmarkReadFrames(b *testing.B) {
	dir := b.TempDir()
	size := min(benchMiB(), 256) << 20
	dumps := makeSeries(b, dir, 2, size)
	st, err := Open(filepath.Join(dir, "store"), Options{Create: true})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if _, err := st.Import(context.Background(), ImportSpec{Run: "r", Dumps: dumps}); err != nil {
		b.Fatal(err)
	}
	img, _ := os.ReadFile(dumps[1])
	buf := make([]byte, 1<<20)
	var ours, base time.Duration
	for i := 0; i < b.N; i++ {
		c, err := st.OpenCheckpoint("r", 1)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		for off := 0; off < size; off += len(buf) {
			if err := c.ReadFrames(uint64(off/PageSize), buf); err != nil {
				b.Fatal(err)
			}
		}
		ours += time.Since(start)
		c.Close()
		start = time.Now()
		for off := 0; off < size; off += len(buf) {
			copy(buf, img[off:])
		}
		base += time.Since(start)
	}
	b.ReportMetric(float64(size)*float64(b.N)/ours.Seconds()/(1<<20), "MiB/s")
	b.ReportMetric(float64(base)/float64(ours), "ratio_vs_memcpy")
}
