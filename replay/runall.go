package replay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"time"
)

// RunConfig describes the replay of every interval of a deterministic run.
type RunConfig struct {
	Mount string
	Run   string
	// Intervals to replay; nil means every interval whose working set is
	// known (<I>.ram, <I>.ws) and whose end, checkpoint I+1, is committed.
	Intervals []int
	// Jobs is how many replays run at once; default 1.
	Jobs int
	// Plugins, WSPlugin, QEMU and Deadline are those of IntervalConfig, for
	// every interval (Deadline per interval).
	Plugins  []string
	WSPlugin string
	QEMU     string
	Deadline time.Duration
	// PrecisionPlugin is IntervalConfig's, for every interval.
	PrecisionPlugin string
	// Compare runs a second pass from full/<I>.ram after the one from
	// <I>.ram, for the sparse/full ratios of memory and start time.
	Compare bool
	Logger  *slog.Logger
	// OnInterval, when set, is called with each interval's report as it
	// ends (one call at a time).
	OnInterval func(IntervalReport)
}

// PassReport is one pass over the intervals, from <I>.ram ("sparse") or from
// full/<I>.ram ("full"). Times are in nanoseconds in JSON.
type PassReport struct {
	Source    string           `json:"source"`
	Intervals []IntervalReport `json:"intervals"`
	// Wall: the whole pass. ReplaySum: the sum of the intervals' replay
	// times (cont to STOP); ReplayPerWall = ReplaySum / Wall, the
	// parallelism gained (below 1 at one job: loading and verifying take
	// time too). TotalSum: the sum of the intervals' whole times.
	Wall          time.Duration `json:"wall_ns"`
	ReplaySum     time.Duration `json:"replay_sum_ns"`
	LoadSum       time.Duration `json:"load_sum_ns"`
	TotalSum      time.Duration `json:"total_sum_ns"`
	ReplayPerWall float64       `json:"replay_sum_per_wall"`
	// MeanLoad is the mean time to start replaying: exec to the incoming
	// migration completed.
	MeanLoad     time.Duration `json:"mean_load_ns"`
	Instructions uint64        `json:"instructions"`
	// PeakRSS is the largest sum of VmRSS of the QEMUs replaying at the same
	// time, sampled every 20 ms from each one's exec to its STOP (the
	// verification, whose reads fault W_I into QEMU, is not counted).
	// MaxReplayRSS is the largest single QEMU's VmHWM.
	PeakRSS uint64 `json:"peak_rss_bytes"`
	// PeakGuestRAM is the same sum for the guest-RAM mappings alone.
	PeakGuestRAM uint64 `json:"peak_guest_ram_bytes"`
	// PeakWS is the largest sum of |W_I| (bytes) of the replays running
	// at the same time: what the sparse replays' guest RAM can hold.
	PeakWS       uint64 `json:"peak_ws_bytes"`
	MaxReplayRSS uint64 `json:"max_replay_rss_bytes"`
	Misses       uint64 `json:"misses"`
	MissFrames   uint64 `json:"miss_frames"`
	Verified     int    `json:"verified"`
	AllVerified  bool   `json:"all_verified"`
	// With RunConfig.PrecisionPlugin: how many replays reached the next
	// checkpoint with a TouchReport, their least and mean precision, and
	// the frames touched outside W_I summed over every replay.
	Touched        int     `json:"touched_intervals,omitempty"`
	MinPrecision   float64 `json:"min_precision,omitempty"`
	MeanPrecision  float64 `json:"mean_precision,omitempty"`
	TouchedOutside uint64  `json:"touched_outside_ws,omitempty"`
}

// RunReport is the result of Run.
type RunReport struct {
	Run    string      `json:"run"`
	Mount  string      `json:"mount"`
	Jobs   int         `json:"jobs"`
	Sparse PassReport  `json:"sparse"`
	Full   *PassReport `json:"full,omitempty"`
	// With Compare: sparse / full of PeakRSS, PeakGuestRAM and MeanLoad;
	// the full pass loads each checkpoint whole (IntervalConfig.Preload).
	MemoryRatio float64 `json:"memory_ratio,omitempty"`
	// WSRatio is the mean |W_I| / RAM over the intervals verified from
	// <I>.ram. PeakWSRatio is the sparse pass's PeakWS / (Jobs × RAM):
	// the share of the full replays' guest RAM that the working sets
	// running together could fill, the figure GuestRAMRatio approaches
	// and MemoryRatio exceeds by QEMU's own memory.
	WSRatio       float64 `json:"ws_ratio,omitempty"`
	PeakWSRatio   float64 `json:"peak_ws_ratio,omitempty"`
	GuestRAMRatio float64 `json:"guest_ram_ratio,omitempty"`
	LoadRatio     float64 `json:"load_ratio,omitempty"`
	AllVerified   bool    `json:"all_verified"`
	// Slurm is set when the intervals ran as a Slurm job (RunSlurm).
	Slurm *SlurmJob `json:"slurm,omitempty"`
}

// Run replays every interval of a deterministic run with Interval, Jobs at
// a time, each verified, and then, with Compare, all of them again from the
// full checkpoints. It returns an error before replaying anything when the
// run cannot be replayed at all (not found, not deterministic, a plugin
// missing, no interval); otherwise the report holds every interval's
// result, and the error, which wraps ErrNotVerified, says how many were
// not verified.
func Run(ctx context.Context, cfg RunConfig) (RunReport, error) {
	rep := RunReport{Run: cfg.Run, Mount: cfg.Mount, Jobs: max(cfg.Jobs, 1)}
	rd, ivs, err := planRun(cfg)
	if err != nil {
		return rep, err
	}
	rep.Sparse = runPass(ctx, cfg, ivs, false)
	rep.WSRatio = rep.Sparse.meanWSFrames() / float64(rd.frames())
	rep.PeakWSRatio = float64(rep.Sparse.PeakWS) / float64(uint64(rep.Jobs)*rd.info.RAMSize)
	rep.AllVerified = rep.Sparse.AllVerified
	if cfg.Compare && ctx.Err() == nil {
		full := runPass(ctx, cfg, ivs, true)
		rep.Full = &full
		rep.AllVerified = rep.AllVerified && full.AllVerified
		if full.PeakRSS > 0 {
			rep.MemoryRatio = float64(rep.Sparse.PeakRSS) / float64(full.PeakRSS)
		}
		if full.PeakGuestRAM > 0 {
			rep.GuestRAMRatio = float64(rep.Sparse.PeakGuestRAM) / float64(full.PeakGuestRAM)
		}
		if full.MeanLoad > 0 {
			rep.LoadRatio = float64(rep.Sparse.MeanLoad) / float64(full.MeanLoad)
		}
	}
	return rep, rep.notVerified()
}

// planRun checks that cfg's run can be replayed at all (found,
// deterministic, its plugins present) and returns the intervals to replay.
func planRun(cfg RunConfig) (*runDir, []int, error) {
	rd, err := openRun(cfg.Mount, cfg.Run)
	if err != nil {
		return nil, nil, err
	}
	det, _, err := readRunMeta(rd.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("replay: %v", err)
	}
	if !det {
		return nil, nil, errorf(ErrNotDeterministic, "run %s is not deterministic: record it with ckptfs record --deterministic", cfg.Run)
	}
	plugins := cfg.Plugins
	if cfg.PrecisionPlugin != "" {
		plugins = append(slices.Clip(plugins), cfg.PrecisionPlugin)
	}
	for _, pl := range plugins {
		if st, err := os.Stat(pluginFile(pl)); err != nil || !st.Mode().IsRegular() {
			return nil, nil, errorf(ErrNoPlugin, "plugin %s: no such file", pluginFile(pl))
		}
	}
	ivs := cfg.Intervals
	if ivs == nil {
		all, err := rd.intervalsWithWS()
		if err != nil {
			return nil, nil, err
		}
		for _, i := range all {
			_, e1 := os.Stat(rd.wsPath(i))
			_, e2 := os.Stat(rd.fullPath(i + 1))
			if e1 == nil && e2 == nil {
				ivs = append(ivs, i)
			}
		}
	}
	if len(ivs) == 0 {
		return nil, nil, errorf(ErrNoNextCheckpoint, "run %s has no interval to replay yet (none with a working set and a next checkpoint)", cfg.Run)
	}
	return rd, ivs, nil
}

// notVerified is nil when every replay was verified, else an error wrapping
// ErrNotVerified that says how many were not and why the first was not.
func (r *RunReport) notVerified() error {
	if r.AllVerified {
		return nil
	}
	n, first := 0, ""
	for _, p := range []*PassReport{&r.Sparse, r.Full} {
		if p == nil {
			continue
		}
		for _, iv := range p.Intervals {
			if !iv.Verified() {
				if n == 0 {
					first = iv.Error
				}
				n++
			}
		}
	}
	total := len(r.Sparse.Intervals)
	if r.Full != nil {
		total += len(r.Full.Intervals)
	}
	return errorf(ErrNotVerified, "%d of %d replays of run %s not verified; the first: %s", n, total, r.Run, first)
}

// runPass replays ivs, cfg.Jobs at a time, from <I>.ram or full/<I>.ram.
func runPass(ctx context.Context, cfg RunConfig, ivs []int, full bool) PassReport {
	pass := PassReport{Source: "sparse", Intervals: make([]IntervalReport, len(ivs))}
	if full {
		pass.Source = "full"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	mem := newRSSSampler(cfg.Mount)
	defer mem.stop()
	var cbMu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := 0; w < max(cfg.Jobs, 1); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range next {
				icfg := IntervalConfig{Mount: cfg.Mount, Run: cfg.Run, Interval: ivs[k], Full: full, Preload: full,
					WSPlugin: cfg.WSPlugin, Plugins: cfg.Plugins, PrecisionPlugin: cfg.PrecisionPlugin, QEMU: cfg.QEMU,
					Deadline: cfg.Deadline, Logger: log, track: mem.track}
				r, err := Interval(ctx, icfg)
				if err != nil {
					log.Debug("replay run: interval not verified", "interval", ivs[k], "source", pass.Source, "err", err)
				}
				pass.Intervals[k] = r
				if cfg.OnInterval != nil {
					cbMu.Lock()
					cfg.OnInterval(r)
					cbMu.Unlock()
				}
			}
		}()
	}
	for k := range ivs {
		if ctx.Err() != nil {
			pass.Intervals[k] = IntervalReport{Run: cfg.Run, Interval: ivs[k], Source: pass.Source,
				Verdict: VerdictFailed, Error: fmt.Sprintf("not replayed: %v", ctx.Err())}
			continue
		}
		next <- k
	}
	close(next)
	wg.Wait()
	pass.Wall = time.Since(t0)
	pass.PeakRSS = mem.stop()
	pass.PeakGuestRAM = mem.peakRAM
	pass.PeakWS = mem.peakWS
	pass.total()
	return pass
}

// meanWSFrames is the mean |W_I| of the verified intervals, 0 for none.
func (p *PassReport) meanWSFrames() float64 {
	var sum float64
	n := 0
	for _, r := range p.Intervals {
		if r.Verified() {
			sum += float64(r.FramesVerified)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / float64(n)
}

// total sums the intervals' reports into the pass's figures.
func (p *PassReport) total() {
	p.AllVerified = true
	for _, r := range p.Intervals {
		p.ReplaySum += r.ReplayTime
		p.LoadSum += r.LoadTime
		p.TotalSum += r.Total
		p.Instructions += r.Instructions
		p.Misses += r.Misses
		p.MissFrames += r.MissFrames
		p.MaxReplayRSS = max(p.MaxReplayRSS, r.PeakRSS)
		if r.Verified() {
			p.Verified++
		} else {
			p.AllVerified = false
		}
		if t := r.Touched; t != nil {
			p.TouchedOutside += t.OutsideWS
			// A replay that stopped short touched only part of W_I.
			if r.ReachedICount == r.TargetICount && r.TargetICount > 0 {
				if p.Touched == 0 || t.Precision < p.MinPrecision {
					p.MinPrecision = t.Precision
				}
				p.Touched++
				p.MeanPrecision += t.Precision
			}
		}
	}
	if p.Touched > 0 {
		p.MeanPrecision /= float64(p.Touched)
	}
	if n := len(p.Intervals); n > 0 {
		p.MeanLoad = p.LoadSum / time.Duration(n)
	}
	if p.Wall > 0 {
		p.ReplayPerWall = float64(p.ReplaySum) / float64(p.Wall)
	}
}
