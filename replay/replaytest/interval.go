package replaytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/index/rawfmt"
	"github.com/ckptfs/ckptfs/internal/replaypos"
	"github.com/ckptfs/ckptfs/replay"
)

// IntervalChecks tunes CheckIntervals.
type IntervalChecks struct {
	// Spinning lists intervals known not to replay (they never reach the
	// next checkpoint): they must end as "timeout" within ShortDeadline.
	Spinning []int
	// ShortDeadline for the spinning and tampered replays; default 5 s.
	ShortDeadline time.Duration
	// Full also replays every interval from full/<i>.ram.
	Full bool
	// QEMU binary; default qemu-system-x86_64.
	QEMU string
}

// CheckIntervals replays a deterministic run of a mount (or a plain
// directory in its layout) with replay.Interval, in real QEMU, and checks:
// every interval with a working set and a next checkpoint, except
// Spinning, is verified from <i>.ram (and from full/<i>.ram with Full);
// each Spinning interval times out within its deadline; a copy of <i>.ram
// with one frame of W_i zeroed (a frame the interval does not change) is
// caught as diverged or timeout; a truncated replay.log, a missing plugin,
// a non-deterministic run.json and the last checkpoint are refused before
// QEMU starts. After each replay no child process is left. The copies are
// plain directories under t.TempDir() whose other files are symbolic links
// to the run's; only frames of W_i are read from <i>.ram. It returns the
// reports of the verified replays.
func CheckIntervals(t testing.TB, mount, run string, opt IntervalChecks) []replay.IntervalReport {
	t.Helper()
	if opt.ShortDeadline == 0 {
		opt.ShortDeadline = 5 * time.Second
	}
	ctx := context.Background()
	dir := filepath.Join(mount, run)
	ivs := replayable(t, dir)
	if len(ivs) == 0 {
		t.Fatalf("%s: no interval with <i>.ram and full/<i+1>.ram", dir)
	}
	spin := map[int]bool{}
	for _, i := range opt.Spinning {
		spin[i] = true
	}
	var reports []replay.IntervalReport
	tamperAt := -1
	for _, i := range ivs {
		cfg := replay.IntervalConfig{Mount: mount, Run: run, Interval: i, QEMU: opt.QEMU}
		if spin[i] {
			cfg.Deadline = opt.ShortDeadline
			t0 := time.Now()
			rep, err := replay.Interval(ctx, cfg)
			el := time.Since(t0)
			t.Logf("interval %d (spinning): %s in %s: %v", i, rep.Verdict, el.Round(time.Millisecond), err)
			if !errors.Is(err, replay.ErrReplayTimeout) || rep.Verdict != replay.VerdictTimeout {
				t.Errorf("interval %d: want a timeout, got %s: %v", i, rep.Verdict, err)
			}
			if el > opt.ShortDeadline+5*time.Second {
				t.Errorf("interval %d: a deadline of %s took %s", i, opt.ShortDeadline, el)
			}
			noChildren(t)
			continue
		}
		for _, full := range []bool{false, true} {
			if full && !opt.Full {
				continue
			}
			cfg.Full = full
			rep, err := replay.Interval(ctx, cfg)
			t.Logf("interval %d (%s): %s: %d instructions, load %s, replay %s, verify %s, %d frames, %d differ, %d misses, peak RSS %d MiB",
				i, rep.Source, rep.Verdict, rep.Instructions, rep.LoadTime.Round(time.Millisecond), rep.ReplayTime.Round(time.Millisecond),
				rep.VerifyTime.Round(time.Millisecond), rep.FramesVerified, rep.DifferingFrames, rep.Misses, rep.PeakRSS>>20)
			if err != nil || !rep.Verified() {
				t.Errorf("interval %d (%s): %s: %v", i, rep.Source, rep.Verdict, err)
			} else if rep.ReachedICount != rep.TargetICount || rep.FramesVerified == 0 {
				t.Errorf("interval %d: verified with %+v", i, rep)
			} else {
				reports = append(reports, rep)
				if tamperAt < 0 && !full {
					tamperAt = i
				}
			}
			noChildren(t)
		}
	}

	if tamperAt >= 0 {
		CheckTampered(t, mount, run, tamperAt, opt)
	}
	i := ivs[len(ivs)-1]
	CheckTruncatedLog(t, mount, run, i, opt)

	cfg := replay.IntervalConfig{Mount: mount, Run: run, Interval: i, QEMU: opt.QEMU,
		Plugins: []string{filepath.Join(t.TempDir(), "missing.so") + ",a=b"}}
	if _, err := replay.Interval(ctx, cfg); !errors.Is(err, replay.ErrNoPlugin) {
		t.Errorf("a missing plugin: got %v, want ErrNoPlugin", err)
	} else {
		t.Logf("a missing plugin: %v", err)
	}

	cp := copyRun(t, mount, run, "run.json")
	var m map[string]any
	data, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m["deterministic"] = false
	if meta, ok := m["meta"].(map[string]any); ok {
		delete(meta, "deterministic")
	}
	data, _ = json.Marshal(m)
	if err := os.WriteFile(filepath.Join(cp, run, "run.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := replay.Interval(ctx, replay.IntervalConfig{Mount: cp, Run: run, Interval: i, QEMU: opt.QEMU}); !errors.Is(err, replay.ErrNotDeterministic) {
		t.Errorf("a non-deterministic run: got %v, want ErrNotDeterministic", err)
	} else {
		t.Logf("a non-deterministic run: %v", err)
	}

	last := lastCheckpoint(t, dir)
	if _, err := replay.Interval(ctx, replay.IntervalConfig{Mount: mount, Run: run, Interval: last, QEMU: opt.QEMU}); !errors.Is(err, replay.ErrNoNextCheckpoint) {
		t.Errorf("the last checkpoint %d: got %v, want ErrNoNextCheckpoint", last, err)
	} else {
		t.Logf("the last checkpoint: %v", err)
	}
	noChildren(t)
	return reports
}

// checkTampered zeroes one frame of W_i that interval i does not change in
// a sparse copy of <i>.ram: the replay must not be verified.
// CheckTampered replays interval i of a deterministic run from a copy of
// <i>.ram with one frame of W_i left a hole (a non-zero frame the interval
// does not change): the replay must end diverged, timed out, or with QEMU
// refusing the checkpoint (a frame it reads while loading the device
// state), within ShortDeadline and a few seconds.
func CheckTampered(t testing.TB, mount, run string, i int, opt IntervalChecks) {
	t.Helper()
	dir := filepath.Join(mount, run)
	ps, frames := pageGeometry(t, dir)
	wsData, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(i)+".ws"))
	if err != nil {
		t.Fatal(err)
	}
	ws, err := rawfmt.ParseList(wsData, frames)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(filepath.Join(dir, strconv.Itoa(i)+".ram"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	next, err := os.Open(filepath.Join(dir, "full", strconv.Itoa(i+1)+".ram"))
	if err != nil {
		t.Fatal(err)
	}
	defer next.Close()
	cp := copyRun(t, mount, run, strconv.Itoa(i)+".ram")
	dst, err := os.OpenFile(filepath.Join(cp, run, strconv.Itoa(i)+".ram"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	if err := dst.Truncate(int64(frames) * ps); err != nil {
		t.Fatal(err)
	}
	a, b := make([]byte, ps), make([]byte, ps)
	victim := int64(-1)
	zero := make([]byte, ps)
	it := ws.Iterator()
	for it.HasNext() {
		pfn := int64(it.Next())
		if _, err := src.ReadAt(a, pfn*ps); err != nil {
			t.Fatal(err)
		}
		if victim < 0 && !bytes.Equal(a, zero) {
			if _, err := next.ReadAt(b, pfn*ps); err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(a, b) {
				victim = pfn
				continue // leave it a hole: it reads as zeros
			}
		}
		if _, err := dst.WriteAt(a, pfn*ps); err != nil {
			t.Fatal(err)
		}
	}
	if victim < 0 {
		t.Logf("tampered copy: interval %d has no unchanged non-zero frame; skipped", i)
		return
	}
	cfg := replay.IntervalConfig{Mount: cp, Run: run, Interval: i, QEMU: opt.QEMU, Deadline: opt.ShortDeadline}
	t0 := time.Now()
	rep, err := replay.Interval(context.Background(), cfg)
	el := time.Since(t0)
	t.Logf("tampered copy of interval %d (frame %#x zeroed): %s in %s: %v", i, victim, rep.Verdict, el.Round(time.Millisecond), err)
	switch {
	case rep.Verdict == replay.VerdictDiverged && errors.Is(err, replay.ErrDiverged):
	case rep.Verdict == replay.VerdictTimeout && errors.Is(err, replay.ErrReplayTimeout):
	case rep.Verdict == replay.VerdictFailed && errors.Is(err, replay.ErrQEMUExited):
	default:
		t.Errorf("tampered copy of interval %d: got %s: %v; want diverged, timeout or QEMU failing", i, rep.Verdict, err)
	}
	if el > opt.ShortDeadline+5*time.Second {
		t.Errorf("tampered copy: a deadline of %s took %s", opt.ShortDeadline, el)
	}
	noChildren(t)
}

// CheckTruncatedLog cuts replay.log at the position checkpoint i+1 needs:
// the replay must be refused before QEMU starts.
func CheckTruncatedLog(t testing.TB, mount, run string, i int, opt IntervalChecks) {
	t.Helper()
	dir := filepath.Join(mount, run)
	dev, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(i+1)+".dev"))
	if err != nil {
		t.Fatal(err)
	}
	pos, err := replaypos.Parse(dev)
	if err != nil {
		t.Fatal(err)
	}
	cp := copyRun(t, mount, run, "replay.log")
	src, err := os.Open(filepath.Join(dir, "replay.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(filepath.Join(cp, run, "replay.log"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(dst, src, int64(pos.LogOffset)); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	_, err = replay.Interval(context.Background(), replay.IntervalConfig{Mount: cp, Run: run, Interval: i, QEMU: opt.QEMU})
	if !errors.Is(err, replay.ErrLogNotReady) || !strings.Contains(err.Error(), "is not replayable yet") {
		t.Errorf("a truncated replay.log: got %v, want ErrLogNotReady", err)
	} else {
		t.Logf("a truncated replay.log: %v", err)
	}
}

// copyRun makes MNT2/<run> in a new temporary directory whose entries are
// symbolic links to the run's, except except, and returns MNT2.
func copyRun(t testing.TB, mount, run, except string) string {
	t.Helper()
	mnt := t.TempDir()
	dst := filepath.Join(mnt, run)
	if err := os.Mkdir(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := filepath.Abs(filepath.Join(mount, run))
	if err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == except {
			continue
		}
		if err := os.Symlink(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return mnt
}

// replayable lists the intervals with <i>.ram, <i>.ws and full/<i+1>.ram.
func replayable(t testing.TB, dir string) []int {
	var out []int
	for i := 0; ; i++ {
		if _, err := os.Stat(filepath.Join(dir, "full", strconv.Itoa(i)+".ram")); err != nil {
			return out
		}
		_, e1 := os.Stat(filepath.Join(dir, strconv.Itoa(i)+".ram"))
		_, e2 := os.Stat(filepath.Join(dir, strconv.Itoa(i)+".ws"))
		_, e3 := os.Stat(filepath.Join(dir, "full", strconv.Itoa(i+1)+".ram"))
		if e1 == nil && e2 == nil && e3 == nil {
			out = append(out, i)
		}
	}
}

func lastCheckpoint(t testing.TB, dir string) int {
	i := 0
	for {
		if _, err := os.Stat(filepath.Join(dir, "full", strconv.Itoa(i+1)+".ram")); err != nil {
			return i
		}
		i++
	}
}

func pageGeometry(t testing.TB, dir string) (pageSize int64, frames uint64) {
	t.Helper()
	var ri struct {
		RAMSize  uint64 `json:"ram_size"`
		PageSize int64  `json:"page_size"`
	}
	data, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &ri); err != nil {
		t.Fatal(err)
	}
	if ri.PageSize == 0 {
		ri.PageSize = 4096
	}
	return ri.PageSize, ri.RAMSize / uint64(ri.PageSize)
}

// noChildren fails when this process has a child process left.
func noChildren(t testing.TB) {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	var kids []string
	for _, f := range tasks {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, pid := range strings.Fields(string(data)) {
			// Only replays are in question: a test may run a mount.
			if comm, err := os.ReadFile("/proc/" + pid + "/comm"); err == nil && strings.HasPrefix(string(comm), "ckptfs") {
				continue
			}
			kids = append(kids, pid)
		}
	}
	if len(kids) > 0 {
		t.Errorf("child processes left: %s", strings.Join(kids, " "))
	}
}
