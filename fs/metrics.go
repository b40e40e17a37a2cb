package fs

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// counters are the mount's counts for one interval of a run. They are the
// only counts the mount keeps: <i>.json shows one interval's, and .status
// (Status) and the Prometheus metrics (collector) show their sums over
// every interval, read when they are asked for. Failures outside any
// checkpoint (a lookup, a listing) count in fsys.other.
type counters struct {
	reads      atomic.Uint64 // READs of <i>.ram served
	bytes      atomic.Uint64
	misses     atomic.Uint64 // one-frame READs of <i>.ram that returned a hole
	missFrames atomic.Uint64 // hole frames those READs returned (= misses)
	// folioHoleFrames are the hole frames returned inside READs of
	// several frames of <i>.ram: not misses (doc.go, Counters).
	folioHoleFrames atomic.Uint64
	prefetchBytes   atomic.Uint64 // W_i bytes pushed into the page cache
	fullReads       atomic.Uint64 // READs of full/<i>.ram served
	fullBytes       atomic.Uint64
	errors          atomic.Uint64 // operations that failed with EIO
	refused         atomic.Uint64 // readahead windows of <i>.ram refused
}

// MountCounters is a snapshot of counters: the "mount" object of <i>.json.
type MountCounters struct {
	Reads      uint64 `json:"reads"`
	Bytes      uint64 `json:"bytes"`
	Misses     uint64 `json:"misses"`
	MissFrames uint64 `json:"miss_frames"`
	// FolioHoleFrames are hole frames served inside multi-frame READs.
	FolioHoleFrames uint64 `json:"folio_hole_frames"`
	PrefetchBytes   uint64 `json:"prefetch_bytes"`
	FullReads       uint64 `json:"full_reads"`
	FullBytes       uint64 `json:"full_bytes"`
	Errors          uint64 `json:"errors"`
	Refused         uint64 `json:"readahead_refused"`
}

func (c *counters) snapshot() MountCounters {
	return MountCounters{
		Reads: c.reads.Load(), Bytes: c.bytes.Load(), Misses: c.misses.Load(), MissFrames: c.missFrames.Load(),
		FolioHoleFrames: c.folioHoleFrames.Load(), PrefetchBytes: c.prefetchBytes.Load(), FullReads: c.fullReads.Load(), FullBytes: c.fullBytes.Load(),
		Errors: c.errors.Load(), Refused: c.refused.Load(),
	}
}

func (m *MountCounters) add(o MountCounters) {
	m.Reads += o.Reads
	m.Bytes += o.Bytes
	m.Misses += o.Misses
	m.MissFrames += o.MissFrames
	m.FolioHoleFrames += o.FolioHoleFrames
	m.PrefetchBytes += o.PrefetchBytes
	m.FullReads += o.FullReads
	m.FullBytes += o.FullBytes
	m.Errors += o.Errors
	m.Refused += o.Refused
}

// totals sums the counters of every interval and of the mount.
func (f *fsys) totals() MountCounters {
	t := f.other.snapshot()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.mu.counters {
		t.add(c.snapshot())
	}
	return t
}

// Status is the mount's whole-mount summary (Mount.Status, MNT/.status).
// Reads and Bytes count both kinds of .ram file.
type Status struct {
	Reads         uint64 `json:"reads"`
	Bytes         uint64 `json:"bytes"`
	PrefetchBytes uint64 `json:"prefetch_bytes"`
	Misses        uint64 `json:"misses"`
	MissFrames    uint64 `json:"miss_frames"`
	// FolioHoleFrames are hole frames served inside multi-frame READs of
	// <i>.ram, which are not misses.
	FolioHoleFrames uint64 `json:"folio_hole_frames"`
	Errors          uint64 `json:"errors"`
	Prefetching     int64  `json:"prefetching"`
	// Store is MountOptions.Store: where tools find the store's socket.
	Store       string    `json:"store,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

func (f *fsys) status() Status {
	t := f.totals()
	st := Status{Reads: t.Reads + t.FullReads, Bytes: t.Bytes + t.FullBytes, PrefetchBytes: t.PrefetchBytes,
		Misses: t.Misses, MissFrames: t.MissFrames, FolioHoleFrames: t.FolioHoleFrames, Errors: t.Errors, Prefetching: f.prefetching.Load(),
		Store: f.storeDir}
	f.lastErr.Lock()
	st.LastError, st.LastErrorAt = f.lastErr.msg, f.lastErr.at
	f.lastErr.Unlock()
	return st
}

// lastError remembers the last failure for .status.
type lastError struct {
	sync.Mutex
	msg string
	at  time.Time
}

func (e *lastError) set(msg string) {
	e.Lock()
	e.msg, e.at = msg, time.Now().UTC()
	e.Unlock()
}

// collector exposes the counters of the mounts of one registry as
// Prometheus metrics, without run or interval labels (unbounded
// cardinality; per-interval numbers are in <i>.json). A second mount in
// one process joins the collector the first one registered; a mount that
// ends leaves its sums behind, so the counters never go down.
type collector struct {
	mu      sync.Mutex
	mounts  map[*fsys]struct{}
	retired MountCounters
}

var (
	descReads = prometheus.NewDesc("ckptfs_fs_reads_total",
		"READ requests served for .ram files, by file kind (sparse <i>.ram or full/<i>.ram).", []string{"file"}, nil)
	descBytes = prometheus.NewDesc("ckptfs_fs_read_bytes_total",
		"Bytes served by READ requests for .ram files, by file kind.", []string{"file"}, nil)
	descPrefetch = prometheus.NewDesc("ckptfs_fs_prefetch_bytes_total",
		"Working-set bytes pushed into the page cache with notify-store.", nil, nil)
	descMisses = prometheus.NewDesc("ckptfs_fs_ws_misses_total",
		"One-frame READ requests of <i>.ram that read a frame outside the working set (a working-set miss).", nil, nil)
	descMissFrames = prometheus.NewDesc("ckptfs_fs_ws_miss_frames_total",
		"Frames outside the working set read from <i>.ram files by one-frame READs (served as zeros).", nil, nil)
	descFolioHoles = prometheus.NewDesc("ckptfs_fs_folio_hole_frames_total",
		"Frames outside the working set served inside multi-frame READs of <i>.ram (kernel folio reads, O_DIRECT); not misses.", nil, nil)
	descErrors = prometheus.NewDesc("ckptfs_fs_errors_total",
		"Operations that failed with EIO (corrupt or unreadable frames).", nil, nil)
	descRefused = prometheus.NewDesc("ckptfs_fs_readahead_refused_total",
		"Kernel readahead windows of <i>.ram refused because they held holes (see doc.go).", nil, nil)
)

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descReads, descBytes, descPrefetch, descMisses, descMissFrames, descFolioHoles, descErrors, descRefused} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	t := c.retired
	for f := range c.mounts {
		t.add(f.totals())
	}
	c.mu.Unlock()
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descReads, t.Reads, "sparse")
	counter(descReads, t.FullReads, "full")
	counter(descBytes, t.Bytes, "sparse")
	counter(descBytes, t.FullBytes, "full")
	counter(descPrefetch, t.PrefetchBytes)
	counter(descMisses, t.Misses)
	counter(descMissFrames, t.MissFrames)
	counter(descFolioHoles, t.FolioHoleFrames)
	counter(descErrors, t.Errors)
	counter(descRefused, t.Refused)
}

func (c *collector) add(f *fsys) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mounts[f] = struct{}{}
}

// retire keeps the sums of a mount that ends and forgets the mount.
func (c *collector) retire(f *fsys) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.mounts[f]; ok {
		c.retired.add(f.totals())
		delete(c.mounts, f)
	}
}

func newLatency() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "ckptfs", Subsystem: "fs", Name: "read_seconds",
		Help:    "Time to serve a READ request of a .ram file, by file kind.",
		Buckets: prometheus.ExponentialBuckets(5e-6, 2, 18), // 5µs .. 0.65s
	}, []string{"file"})
}

// registerMetrics registers f's counters and its READ latency histogram
// with reg (nil: none).
func (f *fsys) registerMetrics(reg prometheus.Registerer) error {
	f.latency = newLatency()
	if reg == nil {
		return nil
	}
	var err error
	if f.latency, err = register(reg, f.latency); err != nil {
		return err
	}
	c, err := register(reg, &collector{mounts: map[*fsys]struct{}{}})
	if err != nil {
		return err
	}
	f.coll = c
	c.add(f)
	return nil
}

// register adds c to reg; a second mount in one process shares the
// collectors the first one registered.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) (T, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if e, ok := are.ExistingCollector.(T); ok {
				return e, nil
			}
		}
		return c, err
	}
	return c, nil
}
