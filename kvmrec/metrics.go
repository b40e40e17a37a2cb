package kvmrec

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the recorder's Prometheus collectors, labelled with the run.
type metrics struct {
	downtime    prometheus.Histogram
	storeTime   prometheus.Histogram
	precopy     prometheus.Histogram
	checkpoints prometheus.Counter
	frames      *prometheus.CounterVec
	devBytes    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, run string) *metrics {
	labels := prometheus.Labels{"run": run}
	m := &metrics{
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "ckptfs", Subsystem: "kvmrec", Name: "downtime_seconds",
			Help:        "VM pause per checkpoint, stop to cont.",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms .. 4 s
		}),
		storeTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "ckptfs", Subsystem: "kvmrec", Name: "store_seconds",
			Help:        "Writing and committing one checkpoint, outside the pause.",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		precopy: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "ckptfs", Subsystem: "kvmrec", Name: "precopy_seconds",
			Help:        "Pre-copy before each pause, with the VM running.",
			ConstLabels: labels,
			Buckets:     prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		checkpoints: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "kvmrec", Name: "checkpoints_total",
			Help: "Committed checkpoints.", ConstLabels: labels,
		}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "kvmrec", Name: "frames_total",
			Help:        "Frames by kind: present (at the stop), scanned (hashed in a pause), precopy_scanned (hashed before it), dirty (changed, stored).",
			ConstLabels: labels,
		}, []string{"kind"}),
		devBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ckptfs", Subsystem: "kvmrec", Name: "device_state_bytes_total",
			Help: "Device state saved.", ConstLabels: labels,
		}),
	}
	if reg == nil {
		return m
	}
	m.downtime = register(reg, m.downtime)
	m.storeTime = register(reg, m.storeTime)
	m.precopy = register(reg, m.precopy)
	m.checkpoints = register(reg, m.checkpoints)
	m.frames = register(reg, m.frames)
	m.devBytes = register(reg, m.devBytes)
	return m
}

// register registers c, or returns the collector already registered for the
// same run (a run recorded again after rm in the same process).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
	}
	return c
}

func (m *metrics) observe(cs CheckpointStats) {
	m.downtime.Observe(cs.Downtime.Seconds())
	m.storeTime.Observe(cs.StoreTime.Seconds())
	m.checkpoints.Inc()
	m.frames.WithLabelValues("present").Add(float64(cs.Present))
	m.frames.WithLabelValues("scanned").Add(float64(cs.Scanned))
	m.frames.WithLabelValues("precopy_scanned").Add(float64(cs.PrecopyScanned))
	if cs.Phases.Precopy > 0 {
		m.precopy.Observe(cs.Phases.Precopy.Seconds())
	}
	m.frames.WithLabelValues("dirty").Add(float64(cs.ChangedFrames))
	m.devBytes.Add(float64(cs.DeviceStateBytes))
}
