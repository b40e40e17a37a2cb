package replay

import (
	"fmt"
	"time"
)

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
