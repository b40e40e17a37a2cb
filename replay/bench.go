package replay

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Mode is one way of loading a checkpoint.
type Mode string

// The four loaders Bench compares, (a)-(d) in reports (doc.go, "The bench").
const (
	ModeFull           Mode = "full"            // (a) read all of full/<i>.ram into anonymous memory
	ModeSparse         Mode = "sparse"          // (b) read only W_i of <i>.ram into anonymous memory
	ModeLazy           Mode = "lazy"            // (c) mmap <i>.ram, touch W_i; the mount prefetches W_i on open
	ModeLazyNoPrefetch Mode = "lazy-noprefetch" // (d) as (c) on a mount with --prefetch none
)

// modeFloor is not a loader but the bench's measure of what any loader
// must at least pay here: filling fresh memory of the size it loads (see
// BenchReport.Floor).
const modeFloor Mode = "floor"

// AllModes returns the four modes in report order.
func AllModes() []Mode { return []Mode{ModeFull, ModeSparse, ModeLazy, ModeLazyNoPrefetch} }

// Letter returns the mode's letter in reports: a, b, c or d.
func (m Mode) Letter() string {
	switch m {
	case ModeFull:
		return "a"
	case ModeSparse:
		return "b"
	case ModeLazy:
		return "c"
	case ModeLazyNoPrefetch:
		return "d"
	}
	return "?"
}

// Describe returns a short human name of the mode.
func (m Mode) Describe() string {
	switch m {
	case ModeFull:
		return "full eager"
	case ModeSparse:
		return "sparse eager"
	case ModeLazy:
		return "lazy + prefetch"
	case ModeLazyNoPrefetch:
		return "lazy, no prefetch"
	}
	return string(m)
}

func (m Mode) lazy() bool { return m == ModeLazy || m == ModeLazyNoPrefetch }

// ParseMode accepts a mode's name or its letter (a-d).
func ParseMode(s string) (Mode, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, m := range AllModes() {
		if s == string(m) || s == m.Letter() {
			return m, nil
		}
	}
	return "", fmt.Errorf("%w: unknown mode %q (want full, sparse, lazy, lazy-noprefetch or a-d)", ErrBadConfig, s)
}

// ParseModes parses a list of modes such as "a,c" or "full,lazy" (a
// --modes flag); "" gives nil, which Bench takes as AllModes().
func ParseModes(s string) ([]Mode, error) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var out []Mode
	for _, f := range strings.Split(s, ",") {
		m, err := ParseMode(f)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

// Prefetch says who puts W_i into the page cache when modes (b) and (c)
// open <i>.ram.
type Prefetch string

const (
	// PrefetchAuto relies on the mount when Mount is a FUSE file system and
	// emulates its prefetch otherwise (a plain directory with the layout).
	PrefetchAuto Prefetch = ""
	// PrefetchMount relies on the mount: the child only opens and maps.
	PrefetchMount Prefetch = "mount"
	// PrefetchEmulate makes the child itself ask for W_i right after open
	// (posix_fadvise WILLNEED over each run), timed as part of the load.
	PrefetchEmulate Prefetch = "emulate"
)

// ParseConcurrency parses a list of concurrencies such as "1,4,16" (a
// --concurrency flag); "" gives nil, which Bench takes as 1, 4, 16.
func ParseConcurrency(s string) ([]int, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, nil
	}
	var out []int
	for _, f := range strings.Split(s, ",") {
		k, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || k < 1 || k > 1024 {
			return nil, fmt.Errorf("%w: concurrency %q (want numbers 1..1024, comma separated)", ErrBadConfig, f)
		}
		out = append(out, k)
	}
	return out, nil
}

// DropPolicy says which caches Bench drops so that each batch starts cold.
type DropPolicy string

const (
	// DropAll writes /proc/sys/vm/drop_caches before each batch (root
	// only; else it falls back to DropFiles) and drops each replayed
	// file's page cache when its child exits. The whole machine's clean
	// caches go, the mount's store included.
	DropAll DropPolicy = ""
	// DropFiles only drops each replayed file's page cache when its child
	// exits (posix_fadvise DONTNEED): no effect on the rest of the
	// machine, but the store behind a mount stays warm, and so does the
	// first batch.
	DropFiles DropPolicy = "files"
	// DropNone leaves all caches warm.
	DropNone DropPolicy = "none"
)

// BenchConfig configures Bench. Mount and Run are required.
type BenchConfig struct {
	Mount string // the mount (or a directory with the same layout)
	Run   string
	// NoPrefetchMount is a second mount of the same store with
	// --prefetch none, for mode (d); without it (d) is skipped with a note.
	NoPrefetchMount string
	// Intervals to replay; default: every interval with a working set.
	Intervals []int
	// Concurrency lists the numbers of replays at once; default 1, 4, 16.
	Concurrency []int
	// Modes to measure; default AllModes().
	Modes []Mode
	// Prefetch says who prefetches W_i in modes (b) and (c); default
	// PrefetchAuto.
	Prefetch Prefetch
	// Drop says how each batch starts cold; default DropAll (doc.go,
	// "Cold starts").
	Drop DropPolicy
	// DropStore, if set, empties the caches of the process serving the
	// mount (its store's block cache) before each batch, with drop_caches
	// (DropAll only). Without it that process stays warm after the first
	// batch: later batches then read from its memory, not from disk.
	DropStore func() error
	// Logger receives progress; nil means none.
	Logger *slog.Logger
	// Executable is the program re-executed for children; default
	// os.Executable(). It must call MaybeRunChild first.
	Executable string
	// BatchTimeout bounds one batch of children; default 10 minutes.
	BatchTimeout time.Duration
	// MemoryLimit skips a (mode, K) whose estimated memory exceeds it;
	// default 80 % of MemAvailable when the bench starts.
	MemoryLimit uint64
}

// BenchReport is the result of Bench. It marshals to JSON as is.
type BenchReport struct {
	Mount           string `json:"mount"`
	NoPrefetchMount string `json:"noprefetch_mount,omitempty"`
	Run             string `json:"run"`
	RAMSize         uint64 `json:"ram_size"`
	PageSize        int64  `json:"page_size"`
	// Intervals describes every replayed interval, from <i>.json and <i>.ws.
	Intervals []IntervalInfo `json:"intervals"`
	// MeanWSBytes is the mean working-set size of the replayed intervals.
	MeanWSBytes uint64  `json:"mean_ws_bytes"`
	WSFraction  float64 `json:"ws_fraction"` // MeanWSBytes / RAMSize
	// Cache says how each batch started: "cold (drop_caches + fadvise +
	// store cache)", "cold (drop_caches + fadvise)", "cold per file
	// (fadvise only)" or "warm".
	Cache string `json:"cache"`
	// PrefetchEmulated is set when modes (b) and (c) emulated the mount's
	// prefetch on open.
	PrefetchEmulated bool         `json:"prefetch_emulated"`
	Results          []ModeResult `json:"results"`
	// Floor is what filling fresh memory costs on this machine, measured
	// at K=1 like (a); nil when (a) was not measured at K=1.
	Floor   *Floor        `json:"floor,omitempty"`
	Notes   []string      `json:"notes,omitempty"`
	Started time.Time     `json:"started"`
	Elapsed time.Duration `json:"elapsed_ns"`
}

// Floor bounds what a loader can achieve on this machine. A loader that
// makes the frames of W_i resident must at least populate fresh memory for
// them and copy them in; WS is that work alone (no file, no page cache),
// RAM the same for all frames. BestLoadReduction = 1 - WS/(a) is the
// largest load reduction against (a) that (b) or (c) could reach here, and
// RAMShare = RAM/(a) says how much of (a) itself is that same work.
type Floor struct {
	WS                time.Duration `json:"ws_ns"`
	RAM               time.Duration `json:"ram_ns"`
	BestLoadReduction float64       `json:"best_load_reduction"`
	RAMShare          float64       `json:"ram_share"`
}

// IntervalInfo describes one interval.
type IntervalInfo struct {
	Interval    int    `json:"interval"`
	WSFrames    uint64 `json:"ws_frames"`    // |W_i|, from <i>.ws
	DirtyFrames uint64 `json:"dirty_frames"` // |D_i|, from <i>.json (0 when absent)
	HasStats    bool   `json:"has_stats"`    // <i>.json was readable
}

// ModeResult aggregates one mode at one concurrency over all intervals.
type ModeResult struct {
	Mode        Mode `json:"mode"`
	Concurrency int  `json:"concurrency"`
	Replays     int  `json:"replays"` // children run
	Batches     int  `json:"batches"` // groups of Concurrency children started together
	// Skipped is why the mode was not measured; the figures are then zero.
	Skipped string `json:"skipped,omitempty"`

	// Per replay, averaged over all replays (so over intervals).
	LoadMean      time.Duration `json:"load_mean_ns"`
	LoadMax       time.Duration `json:"load_max_ns"`
	FootprintMean uint64        `json:"footprint_mean"` // see Sample.Footprint
	RegionMean    uint64        `json:"region_mean"`    // resident size of the loaded/mapped region
	CacheMean     uint64        `json:"cache_mean"`     // page cache of the loaded file after the load
	RSSMean       int64         `json:"rss_delta_mean"` // the child's VmRSS growth
	BytesReadMean uint64        `json:"bytes_read_mean"`
	MajFltMean    float64       `json:"majflt_mean"`
	// Per batch, averaged over batches.
	TotalFootprint uint64        `json:"total_footprint"` // all replays of a batch together
	BatchWall      time.Duration `json:"batch_wall_ns"`   // go → last replay loaded
	// Reductions against ModeFull at the same concurrency (1 - x/full);
	// nil when (a) was not measured.
	LoadReduction      *float64 `json:"load_reduction,omitempty"`
	FootprintReduction *float64 `json:"footprint_reduction,omitempty"`

	Samples []Sample `json:"samples,omitempty"`
}

// Sample is one replay in one child.
type Sample struct {
	Interval int           `json:"interval"`
	Batch    int           `json:"batch"`
	File     string        `json:"file"`
	Load     time.Duration `json:"load_ns"`
	// Footprint is the memory the replay needs resident: for eager modes
	// the anonymous copy (Region), for lazy ones the page cache of the
	// mapped file (Cache), which backs the mapping.
	Footprint uint64 `json:"footprint"`
	Region    uint64 `json:"region"`
	Cache     uint64 `json:"cache"`
	RSSDelta  int64  `json:"rss_delta"`
	AnonDelta int64  `json:"anon_delta"`
	FileDelta int64  `json:"file_delta"`
	BytesRead uint64 `json:"bytes_read"`
	Frames    uint64 `json:"frames"`
	MajFlt    int64  `json:"majflt"`
	MinFlt    int64  `json:"minflt"`
}

// Result returns the result of mode at concurrency k, if measured or skipped.
func (r *BenchReport) Result(m Mode, k int) (ModeResult, bool) {
	for _, x := range r.Results {
		if x.Mode == m && x.Concurrency == k {
			return x, true
		}
	}
	return ModeResult{}, false
}

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
		if _, err := ParseMode(string(m)); err != nil {
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

func containsMode(ms []Mode, m Mode) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}

func (r *BenchReport) note(format string, args ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, args...))
}

func (r *BenchReport) reductions() {
	for i := range r.Results {
		x := &r.Results[i]
		if x.Skipped != "" || x.Replays == 0 {
			continue
		}
		full, ok := r.Result(ModeFull, x.Concurrency)
		if !ok || full.Skipped != "" || full.Replays == 0 {
			continue
		}
		if full.LoadMean > 0 {
			v := 1 - float64(x.LoadMean)/float64(full.LoadMean)
			x.LoadReduction = &v
		}
		if full.FootprintMean > 0 {
			v := 1 - float64(x.FootprintMean)/float64(full.FootprintMean)
			x.FootprintReduction = &v
		}
	}
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

// child is one running measurement child.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
}

// runBatch starts one child per job, waits until all are ready, starts all
// loads at once, collects the results, and then lets all children exit
// together. wall is the time from the start signal to the last result.
func (b *bench) runBatch(ctx context.Context, label string, jobs []childJob) ([]childResult, time.Duration, error) {
	timeout := b.cfg.BatchTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	children := make([]*child, 0, len(jobs))
	defer func() {
		for _, c := range children {
			c.stdin.Close()
		}
		for _, c := range children {
			_ = c.cmd.Wait()
		}
	}()
	for _, job := range jobs {
		c, err := b.startChild(ctx, job)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %s: %v", ErrChild, label, err)
		}
		children = append(children, c)
	}
	for _, c := range children {
		line, err := c.next(ctx)
		if err != nil || line != childReady {
			return nil, 0, fmt.Errorf("%w: %s: no handshake from %s (got %q, %v): does its main call replay.MaybeRunChild() first?%s",
				ErrChild, label, b.exe, truncate(line, 200), err, c.stderrTail())
		}
	}
	t0 := time.Now()
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, childGo+"\n"); err != nil {
			return nil, 0, fmt.Errorf("%w: %s: %v%s", ErrChild, label, err, c.stderrTail())
		}
	}
	out := make([]childResult, len(children))
	var wall time.Duration
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for j, c := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, err := c.next(ctx)
			if err == nil {
				err = json.Unmarshal([]byte(line), &out[j])
				if err == nil && out[j].Err != "" {
					err = errors.New(out[j].Err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			wall = max(wall, time.Since(t0))
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("%w: %s: %s: %v%s", ErrChild, label, jobs[j].RAM, err, c.stderrTail())
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, 0, firstErr
	}
	return out, wall, nil
}

func (b *bench) startChild(ctx context.Context, job childJob) (*child, error) {
	data, _ := json.Marshal(job)
	cmd := exec.CommandContext(ctx, b.exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(data))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	c := &child{cmd: cmd, lines: make(chan string, 4), stderr: &bytes.Buffer{}}
	cmd.Stderr = &lockedWriter{w: c.stderr}
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %v", b.exe, err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c, nil
}

// next returns the child's next stdout line.
func (c *child) next(ctx context.Context) (string, error) {
	select {
	case line, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("child exited early")
		}
		return line, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *child) stderrTail() string {
	w := c.cmd.Stderr.(*lockedWriter)
	w.mu.Lock()
	defer w.mu.Unlock()
	s := strings.TrimSpace(c.stderr.String())
	if s == "" {
		return ""
	}
	return "; stderr: " + truncate(s, 500)
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// memAvailable returns MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	proc, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, err
	}
	mi, err := proc.Meminfo()
	if err != nil {
		return 0, err
	}
	if mi.MemAvailableBytes == nil {
		return 0, errors.New("no MemAvailable in /proc/meminfo")
	}
	return *mi.MemAvailableBytes, nil
}
