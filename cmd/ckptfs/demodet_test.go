package main

import (
	"errors"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/replay"
)

// The demo's last line says how many replays verified and how the others
// failed, and its exit is non-zero exactly when one did not verify.
func TestDemoReplaysVerdict(t *testing.T) {
	ok := replay.IntervalReport{Interval: 0, Verdict: replay.VerdictVerified}
	spun := replay.IntervalReport{Interval: 1, Verdict: replay.VerdictTimeout}
	holes := replay.IntervalReport{Interval: 2, Verdict: replay.VerdictDiverged, TargetICount: 9, ReachedICount: 9, Misses: 4,
		Touched: &replay.TouchReport{OutsideWS: 2}}
	raced := replay.IntervalReport{Interval: 4, Verdict: replay.VerdictDiverged, TargetICount: 9, ReachedICount: 9, Misses: 4,
		Touched: &replay.TouchReport{}}
	differ := replay.IntervalReport{Interval: 3, Verdict: replay.VerdictDiverged, TargetICount: 9, ReachedICount: 9, DifferingFrames: 1}

	all := &demoReplays{run: "demo-x-det", json: "/d/replay.json"}
	all.rep.Sparse = replay.PassReport{Intervals: []replay.IntervalReport{ok, ok}, Verified: 2, AllVerified: true}
	if v := all.verdict(); !strings.Contains(v, "all 2 verified") || all.err() != nil {
		t.Errorf("all verified: %q, %v", v, all.err())
	}
	var none *demoReplays // the synthetic guest: no deterministic part
	if none.err() != nil {
		t.Errorf("no deterministic part: %v", none.err())
	}

	some := &demoReplays{run: "demo-x-det", json: "/d/replay.json"}
	some.rep.Sparse = replay.PassReport{Intervals: []replay.IntervalReport{ok, spun, holes, differ, raced}, Verified: 1}
	v := some.verdict()
	for _, want := range []string{"NOT VERIFIED: 1 of 5", "1 spun until the deadline", "1 reached the next checkpoint with no frame different but left W_i",
		"1 reached it with no frame different but read holes of <I>.ram, touching no frame outside W_i",
		"1 ended elsewhere or with frames different", "known gap"} {
		if !strings.Contains(v, want) {
			t.Errorf("verdict %q lacks %q", v, want)
		}
	}
	err := some.err()
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(err.Error(), "4 of 5 interval replays of demo-x-det not verified") {
		t.Errorf("exit: %v", err)
	}

	differOnly := &demoReplays{run: "r"}
	differOnly.rep.Sparse = replay.PassReport{Intervals: []replay.IntervalReport{differ}}
	if v := differOnly.verdict(); strings.Contains(v, "known gap") {
		t.Errorf("a replay that ended with a different frame is blamed on the known gap: %q", v)
	}
}
