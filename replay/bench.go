package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Bench measures load time and memory footprint of the four loaders on the
// intervals of one run, each in child processes; see doc.go.
func Bench(ctx context.Context, cfg BenchConfig) (*BenchReport, error) {
	rd, err := openRun(cfg.Mount, cfg.Run)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	exe := cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("replay: cannot find own executable for children: %v", err)
		}
	}
	conc := cfg.Concurrency
	if len(conc) == 0 {
		conc = []int{1, 4, 16}
	}
	for _, k := range conc {
		if k < 1 || k > 1024 {
			return nil, fmt.Errorf("%w: concurrency %d (want 1..1024)", ErrBadConfig, k)
		}
	}
	modes := cfg.Modes
	if len(modes) == 0 {
		modes = AllModes()
	}
	for _, m := range modes {
		if _, err := parseMode(string(m)); err != nil {
			return nil, err
		}
	}
	var rdNP *runDir
	if cfg.NoPrefetchMount != "" {
		if rdNP, err = openRun(cfg.NoPrefetchMount, cfg.Run); err != nil {
			return nil, fmt.Errorf("no-prefetch mount: %w", err)
		}
		if rdNP.info.RAMSize != rd.info.RAMSize {
			return nil, fmt.Errorf("%w: %s has ram_size %d, %s has %d", ErrRAMSizeMismatch,
				rd.dir, rd.info.RAMSize, rdNP.dir, rdNP.info.RAMSize)
		}
	}

	ivs := cfg.Intervals
	if len(ivs) == 0 {
		if ivs, err = rd.intervalsWithWS(); err != nil {
			return nil, err
		}
		if len(ivs) == 0 {
			return nil, fmt.Errorf("%w: run %s has no interval with a working set yet", ErrNoWorkingSet, cfg.Run)
		}
	}
	rep := &BenchReport{
		Mount: cfg.Mount, NoPrefetchMount: cfg.NoPrefetchMount, Run: cfg.Run,
		RAMSize: rd.info.RAMSize, PageSize: rd.pageSize(), Started: time.Now(),
	}
	var wsSum, wsMax uint64
	for _, i := range ivs {
		if i < 0 {
			return nil, fmt.Errorf("%w: interval %d", ErrBadConfig, i)
		}
		if err := rd.checkRAMFile(rd.ramPath(i)); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: interval %d of %s (%s missing)", ErrNoWorkingSet, i, cfg.Run, rd.ramPath(i))
			}
			return nil, fmt.Errorf("replay: %w", err)
		}
		if err := rd.checkRAMFile(rd.fullPath(i)); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: %s missing", ErrNoCheckpoint, rd.fullPath(i))
			}
			return nil, fmt.Errorf("replay: %w", err)
		}
		_, n, err := readRuns(rd.wsPath(i), rd.frames())
		if err != nil {
			return nil, fmt.Errorf("replay: working set of interval %d: %w", i, err)
		}
		ii := IntervalInfo{Interval: i, WSFrames: n}
		if st, ok := rd.intervalStats(i); ok {
			ii.DirtyFrames, ii.HasStats = st.DirtyFrames, true
			if st.WorkingSetFrames != 0 && st.WorkingSetFrames != n {
				rep.note("interval %d: %s says ws_frames %d, %s has %d frames", i,
					rd.statPath(i), st.WorkingSetFrames, rd.wsPath(i), n)
			}
		}
		rep.Intervals = append(rep.Intervals, ii)
		wsSum += n
		wsMax = max(wsMax, n)
	}
	ps := uint64(rep.PageSize)
	rep.MeanWSBytes = wsSum * ps / uint64(len(ivs))
	rep.WSFraction = float64(rep.MeanWSBytes) / float64(rep.RAMSize)

	b := &bench{cfg: cfg, rd: rd, rdNP: rdNP, exe: exe, log: log, rep: rep}
	b.memLimit = cfg.MemoryLimit
	if b.memLimit == 0 {
		if avail, err := memAvailable(); err == nil {
			b.memLimit = avail / 10 * 8
		}
	}
	switch cfg.Drop {
	case DropNone:
		rep.Cache = "warm"
	case DropFiles:
		rep.Cache = "cold per file (fadvise only)"
	case DropAll:
		if b.tryDropCaches() == nil {
			rep.Cache = "cold (drop_caches + fadvise)"
			if cfg.DropStore != nil {
				if err := cfg.DropStore(); err != nil {
					return nil, fmt.Errorf("dropping the mount's store cache: %w", err)
				}
				rep.Cache = "cold (drop_caches + fadvise + store cache)"
			} else {
				rep.note("the mount's store cache is not dropped between batches (no DropStore): after the first batch, loads read from the serving process's memory")
			}
			break
		}
		rep.Cache = "cold per file (fadvise only)"
		rep.note("cannot write /proc/sys/vm/drop_caches (%v): only the files' own page cache is dropped (fadvise DONTNEED after each replay); the mount's store is not cold", b.dropErr)
	default:
		return nil, fmt.Errorf("%w: drop %q (want files or none)", ErrBadConfig, cfg.Drop)
	}
	switch cfg.Prefetch {
	case PrefetchAuto:
		var st unix.Statfs_t
		if err := unix.Statfs(rd.dir, &st); err == nil && st.Type != unix.FUSE_SUPER_MAGIC {
			rep.PrefetchEmulated = true
		}
	case PrefetchEmulate:
		rep.PrefetchEmulated = true
	case PrefetchMount:
	default:
		return nil, fmt.Errorf("%w: prefetch %q (want mount or emulate)", ErrBadConfig, cfg.Prefetch)
	}
	if rep.PrefetchEmulated && (containsMode(modes, ModeLazy) || containsMode(modes, ModeSparse)) {
		rep.note("%s is not a FUSE mount: for (b) and (c) the replay emulates the mount's working-set prefetch on open (posix_fadvise WILLNEED over W_i, timed)", rd.dir)
	}
	if containsMode(modes, ModeLazyNoPrefetch) && rdNP == nil {
		rep.note("(d) lazy without prefetch skipped: give a second mount of the store with --prefetch none (BenchConfig.NoPrefetchMount)")
	}

	if err := b.warmUp(ctx, modes, ivs, wsMax*ps); err != nil {
		return nil, err
	}
	for _, k := range conc {
		for _, m := range modes {
			res, err := b.measure(ctx, m, k, ivs, wsMax*ps)
			if err != nil {
				return nil, err
			}
			rep.Results = append(rep.Results, res)
		}
	}
	rep.reductions()
	if full, ok := rep.Result(ModeFull, 1); ok && full.Skipped == "" && full.Replays > 0 {
		if err := b.measureFloor(ctx, ivs, full.LoadMean); err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			// The floor only explains the figures; they stand without it.
			rep.note("floor not measured: %v", err)
		}
	}
	rep.Elapsed = time.Since(rep.Started)
	return rep, nil
}

// warmUp runs every mode once over all intervals at K=1, untimed, before
// anything is measured. Every process involved grows its memory on first
// use: the mount's heap up to its budget, and the kernel's own page pool
// (on a virtual machine the host backs a guest page only when it is first
// touched). Without the warm-up (a), timed first, would pay for all of it,
// and (b) and (c) would look better than they are.
func (b *bench) warmUp(ctx context.Context, modes []Mode, ivs []int, wsMaxBytes uint64) error {
	notes := len(b.rep.Notes)
	for _, m := range modes {
		if _, err := b.measure(ctx, m, 1, ivs, wsMaxBytes); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	b.rep.Notes = b.rep.Notes[:notes]
	b.rep.note("warm-up: every mode ran once over all intervals, untimed, before the measurements")
	return nil
}

type bench struct {
	cfg      BenchConfig
	rd, rdNP *runDir
	exe      string
	log      *slog.Logger
	rep      *BenchReport
	memLimit uint64
	dropErr  error
	dropOK   bool
}

// tryDropCaches drops the kernel's clean caches (root only). After the
// first failure it does not try again.
func (b *bench) tryDropCaches() error {
	if b.dropErr != nil {
		return b.dropErr
	}
	err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0)
	if err != nil {
		b.dropErr = err
		return err
	}
	b.dropOK = true
	return nil
}

// measure runs mode m with k replays at once over the intervals ivs: batch j
// replays intervals ivs[j*k ... j*k+k-1], wrapping around so every batch
// has k replays and every interval is replayed at least once.
func (b *bench) measure(ctx context.Context, m Mode, k int, ivs []int, wsMaxBytes uint64) (ModeResult, error) {
	res := ModeResult{Mode: m, Concurrency: k}
	rd := b.rd
	if m == ModeLazyNoPrefetch {
		if b.rdNP == nil {
			res.Skipped = "no NoPrefetchMount"
			return res, nil
		}
		rd = b.rdNP
	}
	per := wsMaxBytes
	if m == ModeFull {
		per = b.rep.RAMSize
	}
	if need := per * uint64(k); b.memLimit > 0 && need > b.memLimit {
		res.Skipped = fmt.Sprintf("needs about %s, limit %s", fmtBytes(need), fmtBytes(b.memLimit))
		b.rep.note("(%s) %s with K=%d skipped: %s", m.Letter(), m.Describe(), k, res.Skipped)
		return res, nil
	}
	batches := (len(ivs) + k - 1) / k
	var loadSum, wallSum time.Duration
	var fpSum, regSum, cacheSum, readSum, totalSum uint64
	var rssSum, majSum int64
	for bi := 0; bi < batches; bi++ {
		jobs := make([]childJob, k)
		for j := range jobs {
			i := ivs[(bi*k+j)%len(ivs)]
			jobs[j] = childJob{Mode: m, RAM: rd.ramPath(i), WS: rd.wsPath(i),
				RAMSize: b.rep.RAMSize, PageSize: b.rep.PageSize, Cold: b.cfg.Drop != DropNone}
			if m == ModeFull {
				jobs[j].RAM = rd.fullPath(i)
			}
			// (b) and (c) open <i>.ram on the prefetching mount.
			jobs[j].EmulatePrefetch = (m == ModeSparse || m == ModeLazy) && b.rep.PrefetchEmulated
		}
		if b.dropOK {
			if b.cfg.DropStore != nil {
				if err := b.cfg.DropStore(); err != nil {
					return res, fmt.Errorf("dropping the mount's store cache: %w", err)
				}
			}
			_ = b.tryDropCaches()
		}
		label := fmt.Sprintf("(%s) %s, K=%d, batch %d", m.Letter(), m.Describe(), k, bi)
		out, wall, err := b.runBatch(ctx, label, jobs)
		if err != nil {
			return res, err
		}
		wallSum += wall
		var total uint64
		cacheByFile := map[string]uint64{}
		for j, r := range out {
			s := Sample{
				Interval: ivs[(bi*k+j)%len(ivs)], Batch: bi, File: jobs[j].RAM,
				Load: time.Duration(r.LoadNS), Region: r.RegionBytes, Cache: r.CacheBytes,
				RSSDelta: r.RSSDelta, AnonDelta: r.AnonDelta, FileDelta: r.FileDelta,
				BytesRead: r.BytesRead, Frames: r.Frames, MajFlt: r.MajFlt, MinFlt: r.MinFlt,
			}
			if m.lazy() {
				// The page cache of one file is shared by all its mappings.
				s.Footprint = r.CacheBytes
				cacheByFile[s.File] = max(cacheByFile[s.File], r.CacheBytes)
			} else {
				s.Footprint = r.RegionBytes
				total += r.RegionBytes
			}
			res.Samples = append(res.Samples, s)
			res.Replays++
			loadSum += s.Load
			res.LoadMax = max(res.LoadMax, s.Load)
			fpSum += s.Footprint
			regSum += s.Region
			cacheSum += s.Cache
			rssSum += s.RSSDelta
			readSum += s.BytesRead
			majSum += s.MajFlt
		}
		for _, c := range cacheByFile {
			total += c
		}
		totalSum += total
		res.Batches++
		b.log.Info("replay bench batch", "mode", string(m), "k", k, "batch", bi,
			"wall", wall.Round(time.Microsecond), "total", fmtBytes(total))
	}
	n := uint64(res.Replays)
	res.LoadMean = loadSum / time.Duration(n)
	res.FootprintMean = fpSum / n
	res.RegionMean = regSum / n
	res.CacheMean = cacheSum / n
	res.RSSMean = rssSum / int64(n)
	res.BytesReadMean = readSum / n
	res.MajFltMean = float64(majSum) / float64(n)
	res.TotalFootprint = totalSum / uint64(res.Batches)
	res.BatchWall = wallSum / time.Duration(res.Batches)
	return res, nil
}

// measureFloor measures Floor: for every interval, one child fills fresh
// memory of W_i's size, and one of the RAM size, one at a time.
func (b *bench) measureFloor(ctx context.Context, ivs []int, full time.Duration) error {
	var ws, ram time.Duration
	for _, i := range ivs {
		for _, whole := range []bool{false, true} {
			job := childJob{Mode: modeFloor, WS: b.rd.wsPath(i), RAMSize: b.rep.RAMSize, PageSize: b.rep.PageSize}
			if whole {
				job.WS = ""
			}
			out, _, err := b.runBatch(ctx, fmt.Sprintf("floor, interval %d", i), []childJob{job})
			if err != nil {
				return err
			}
			if whole {
				ram += time.Duration(out[0].LoadNS)
			} else {
				ws += time.Duration(out[0].LoadNS)
			}
		}
	}
	n := time.Duration(len(ivs))
	f := &Floor{WS: ws / n, RAM: ram / n}
	f.BestLoadReduction = 1 - float64(f.WS)/float64(full)
	f.RAMShare = float64(f.RAM) / float64(full)
	b.rep.Floor = f
	b.log.Info("replay bench floor", "ws", f.WS.Round(time.Microsecond), "ram", f.RAM.Round(time.Microsecond))
	return nil
}
