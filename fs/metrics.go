package fs

import (
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the mount's Prometheus collectors. They carry no run or
// interval labels (unbounded cardinality); per-interval numbers are in
// <i>.json.
type metrics struct {
	reads      *prometheus.CounterVec // file="sparse"|"full"
	bytes      *prometheus.CounterVec
	prefetch   prometheus.Counter
	misses     prometheus.Counter
	missFrames prometheus.Counter
	errors     prometheus.Counter
	refused    prometheus.Counter
	latency    *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "reads_total",
			Help: "READ requests served for .ram files, by file kind (sparse <i>.ram or full/<i>.ram).",
		}, []string{"file"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "read_bytes_total",
			Help: "Bytes served by READ requests for .ram files, by file kind.",
		}, []string{"file"}),
		prefetch: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "prefetch_bytes_total",
			Help: "Working-set bytes pushed into the page cache with notify-store.",
		}),
		misses: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "ws_misses_total",
			Help: "READ requests of <i>.ram that touched a frame outside the working set.",
		}),
		missFrames: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "ws_miss_frames_total",
			Help: "Frames outside the working set read from <i>.ram files (served as zeros).",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "errors_total",
			Help: "Operations that failed with EIO (corrupt or unreadable frames).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "readahead_refused_total",
			Help: "Kernel readahead windows of <i>.ram refused because they held holes (see doc.go).",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ckptfs", Subsystem: "fs", Name: "read_seconds",
			Help:    "Time to serve a READ request of a .ram file, by file kind.",
			Buckets: prometheus.ExponentialBuckets(5e-6, 2, 18), // 5µs .. 0.65s
		}, []string{"file"}),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.reads, err = register(reg, m.reads); err != nil {
		return nil, err
	}
	if m.bytes, err = register(reg, m.bytes); err != nil {
		return nil, err
	}
	if m.prefetch, err = register(reg, m.prefetch); err != nil {
		return nil, err
	}
	if m.misses, err = register(reg, m.misses); err != nil {
		return nil, err
	}
	if m.missFrames, err = register(reg, m.missFrames); err != nil {
		return nil, err
	}
	if m.errors, err = register(reg, m.errors); err != nil {
		return nil, err
	}
	if m.refused, err = register(reg, m.refused); err != nil {
		return nil, err
	}
	if m.latency, err = register(reg, m.latency); err != nil {
		return nil, err
	}
	return m, nil
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

// intervalCounters are this mount's counters for one checkpoint/interval of
// a run, shown in <i>.json.
type intervalCounters struct {
	reads         atomic.Uint64 // READs of <i>.ram
	bytes         atomic.Uint64
	misses        atomic.Uint64 // READs of <i>.ram that touched a hole
	missFrames    atomic.Uint64
	prefetchBytes atomic.Uint64
	fullReads     atomic.Uint64 // READs of full/<i>.ram
	fullBytes     atomic.Uint64
	errors        atomic.Uint64
}

// MountCounters is the JSON form of intervalCounters.
type MountCounters struct {
	Reads         uint64 `json:"reads"`
	Bytes         uint64 `json:"bytes"`
	Misses        uint64 `json:"misses"`
	MissFrames    uint64 `json:"miss_frames"`
	PrefetchBytes uint64 `json:"prefetch_bytes"`
	FullReads     uint64 `json:"full_reads"`
	FullBytes     uint64 `json:"full_bytes"`
	Errors        uint64 `json:"errors"`
}

func (c *intervalCounters) snapshot() MountCounters {
	return MountCounters{
		Reads: c.reads.Load(), Bytes: c.bytes.Load(), Misses: c.misses.Load(), MissFrames: c.missFrames.Load(),
		PrefetchBytes: c.prefetchBytes.Load(), FullReads: c.fullReads.Load(), FullBytes: c.fullBytes.Load(),
		Errors: c.errors.Load(),
	}
}

// Status is the mount's whole-mount summary (Mount.Status, MNT/.status).
type Status struct {
	Reads         uint64 `json:"reads"`
	Bytes         uint64 `json:"bytes"`
	PrefetchBytes uint64 `json:"prefetch_bytes"`
	Misses        uint64 `json:"misses"`
	MissFrames    uint64 `json:"miss_frames"`
	Errors        uint64 `json:"errors"`
	Prefetching   int64  `json:"prefetching"`
	// Store is MountOptions.Store: where tools find the store's socket.
	Store       string    `json:"store,omitempty"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// status holds the whole-mount counters.
type status struct {
	reads, bytes, prefetchBytes, misses, missFrames, errors atomic.Uint64
	prefetching                                             atomic.Int64
	mu                                                      struct {
		sync.Mutex
		lastErr   string
		lastErrAt time.Time
	}
}

func (s *status) setError(msg string) {
	s.errors.Add(1)
	s.mu.Lock()
	s.mu.lastErr, s.mu.lastErrAt = msg, time.Now().UTC()
	s.mu.Unlock()
}

func (s *status) snapshot() Status {
	st := Status{Reads: s.reads.Load(), Bytes: s.bytes.Load(), PrefetchBytes: s.prefetchBytes.Load(),
		Misses: s.misses.Load(), MissFrames: s.missFrames.Load(), Errors: s.errors.Load(), Prefetching: s.prefetching.Load()}
	s.mu.Lock()
	st.LastError, st.LastErrorAt = s.mu.lastErr, s.mu.lastErrAt
	s.mu.Unlock()
	return st
}
