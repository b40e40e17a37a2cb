package fs

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// gather sums every sample of reg by metric name, and by name and "file"
// label as "name/label".
func gather(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()] += metricValue(m)
			for _, l := range m.GetLabel() {
				if l.GetName() == "file" {
					got[mf.GetName()+"/"+l.GetValue()] += metricValue(m)
				}
			}
		}
	}
	return got
}

// TestCountersOneSource: the Prometheus metrics and .status are sums of the
// per-interval counters that <i>.json shows; a second mount on the same
// registry adds to them, and a mount that ends leaves its counts behind.
func TestCountersOneSource(t *testing.T) {
	reg := prometheus.NewRegistry()
	src := newMemSource()
	a := nodeFS(t, src, MountOptions{Registry: reg}).f
	b := nodeFS(t, src, MountOptions{Registry: reg}).f

	ca, cb := a.counters(ckptKey{1, 0}), a.counters(ckptKey{1, 1})
	ca.reads.Add(3)
	ca.bytes.Add(3 * pageSize)
	ca.misses.Add(1)
	ca.missFrames.Add(2)
	cb.fullReads.Add(5)
	cb.fullBytes.Add(7)
	cb.errors.Add(1)
	a.other.errors.Add(1)
	b.counters(ckptKey{1, 0}).reads.Add(10)

	st := a.status()
	if st.Reads != 8 || st.Bytes != 3*pageSize+7 || st.Misses != 1 || st.MissFrames != 2 || st.Errors != 2 {
		t.Errorf("status of mount a: %+v", st)
	}
	if j := a.counters(ckptKey{1, 0}).snapshot(); j.Reads != 3 || j.Misses != 1 || j.MissFrames != 2 || j.FullReads != 0 {
		t.Errorf("interval 0 of mount a: %+v", j)
	}
	want := map[string]float64{
		"ckptfs_fs_reads_total/sparse": 13, "ckptfs_fs_reads_total/full": 5,
		"ckptfs_fs_read_bytes_total/sparse": 3 * pageSize, "ckptfs_fs_read_bytes_total/full": 7,
		"ckptfs_fs_ws_misses_total": 1, "ckptfs_fs_ws_miss_frames_total": 2, "ckptfs_fs_errors_total": 2,
	}
	check := func(when string) {
		t.Helper()
		got := gather(t, reg)
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: %s = %v, want %v", when, k, got[k], v)
			}
		}
	}
	check("both mounted")
	b.close()
	b.counters(ckptKey{1, 0}).reads.Add(100) // after the end: not counted
	check("b ended")
}
