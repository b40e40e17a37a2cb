package replay_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/replay"
)

// detRun writes a deterministic run "d" of 4 MiB with checkpoints 0 and 1
// (1.dev from testdata: icount 1744759, log offset 1765) into a new mount
// directory and returns the mount.
func detRun(t *testing.T) string {
	t.Helper()
	mnt := t.TempDir()
	dir := filepath.Join(mnt, "d")
	if err := os.MkdirAll(filepath.Join(dir, "full"), 0o755); err != nil {
		t.Fatal(err)
	}
	dev, err := os.ReadFile(filepath.Join("testdata", "replay-1.dev"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"run.json": `{"name":"d","ram_size":4194304,"page_size":4096,"deterministic":true,` +
			`"qemu_args":["-machine","pc","-m","4M","-icount","shift=auto,rr=record,rrfile=/x/log","-S"]}`,
		"0.json":     `{"checkpoint":0,"icount":0,"mount":{"misses":0,"miss_frames":0}}`,
		"1.json":     `{"checkpoint":1,"icount":1744759}`,
		"0.ws":       "0-15\n",
		"0.dev":      string(dev),
		"1.dev":      string(dev),
		"replay.log": strings.Repeat("x", 4096),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"0.ram", "full/0.ram", "full/1.ram"} {
		if err := os.WriteFile(filepath.Join(dir, name), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(filepath.Join(dir, name), 4<<20); err != nil {
			t.Fatal(err)
		}
	}
	return mnt
}

// fakeCommand writes a shell script named name that stands in for a
// command (QEMU, sbatch, squeue, scancel).
func fakeCommand(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// fakeQEMU writes a shell script that stands in for QEMU.
func fakeQEMU(t *testing.T, body string) string {
	return fakeCommand(t, "qemu-system-x86_64", body)
}

func TestIntervalRefused(t *testing.T) {
	ctx := context.Background()
	mnt := detRun(t)
	dir := filepath.Join(mnt, "d")
	never := fakeQEMU(t, "echo started >> "+filepath.Join(t.TempDir(), "started")+"; exit 1")
	cfg := replay.IntervalConfig{Mount: mnt, Run: "d", Interval: 0, QEMU: never}
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	check := func(what string, cfg replay.IntervalConfig, kind error, msg string) {
		t.Helper()
		rep, err := replay.Interval(ctx, cfg)
		if !errors.Is(err, kind) || !strings.Contains(err.Error(), msg) || rep.Verdict != replay.VerdictFailed || rep.Error != err.Error() {
			t.Errorf("%s: %v (verdict %s), want %v containing %q", what, err, rep.Verdict, kind, msg)
		}
		if rep.QEMUArgs != nil {
			t.Errorf("%s: QEMU started", what)
		}
	}

	c := cfg
	c.Plugins = []string{filepath.Join(dir, "nope.so") + ",x=1"}
	check("missing plugin", c, replay.ErrNoPlugin, "plugin "+filepath.Join(dir, "nope.so")+": no such file")
	c.Plugins = []string{dir}
	check("plugin is a directory", c, replay.ErrNoPlugin, "not a regular file")

	c = cfg
	c.Interval = 1
	check("last checkpoint", c, replay.ErrNoNextCheckpoint, "interval 1 of run d has no end yet: checkpoint 2 is not committed")

	write("replay.log", strings.Repeat("x", 1765))
	check("truncated log", cfg, replay.ErrLogNotReady, "interval 0 is not replayable yet: QEMU has written 1765 of the 1766 log bytes it needs")
	os.Remove(filepath.Join(dir, "replay.log"))
	check("no log", cfg, replay.ErrLogNotReady, "has no replay log")
	write("replay.log", strings.Repeat("x", 4096))

	write("1.json", `{"icount":5}`)
	check("icount mismatch", cfg, replay.ErrBadConfig, "checkpoint 1 of run d is inconsistent: ")
	write("1.json", `{"checkpoint":1,"icount":1744759}`)

	os.Rename(filepath.Join(dir, "0.dev"), filepath.Join(dir, "0.dev.x"))
	check("no device state", cfg, replay.ErrNoDeviceState, "0.dev missing")
	os.Rename(filepath.Join(dir, "0.dev.x"), filepath.Join(dir, "0.dev"))

	c = cfg
	c.QEMU = filepath.Join(dir, "no-such-qemu")
	check("no QEMU", c, replay.ErrNoQEMU, "no-such-qemu")

	write("run.json", `{"name":"d","ram_size":4194304,"page_size":4096,"qemu_args":["-machine","pc"]}`)
	check("not deterministic", cfg, replay.ErrNotDeterministic, "run d is not deterministic: record it with ckptfs record --deterministic")
	if _, err := os.Stat(filepath.Join(t.TempDir(), "started")); err == nil {
		t.Error("QEMU was started")
	}
}

func TestIntervalQEMUFails(t *testing.T) {
	ctx := context.Background()
	mnt := detRun(t)
	cfg := replay.IntervalConfig{Mount: mnt, Run: "d", Interval: 0,
		QEMU: fakeQEMU(t, `echo "qemu-system-x86_64: -icount rr=replay: boom" >&2; exit 1`)}
	rep, err := replay.Interval(ctx, cfg)
	if !errors.Is(err, replay.ErrQEMUExited) || err.Error() != "QEMU exited while loading the checkpoint of interval 0: qemu-system-x86_64: -icount rr=replay: boom (exit status 1)" {
		t.Errorf("%v", err)
	}
	if rep.Verdict != replay.VerdictFailed || len(rep.QEMUArgs) == 0 {
		t.Errorf("%+v", rep)
	}

	// A QEMU that never answers and ignores SIGTERM, like a diverged
	// replay: killed at the deadline.
	cfg.QEMU = fakeQEMU(t, "trap '' TERM\nsleep 60 & sleep 60")
	cfg.Deadline = 300 * time.Millisecond
	t0 := time.Now()
	rep, err = replay.Interval(ctx, cfg)
	if el := time.Since(t0); el > 3*time.Second {
		t.Errorf("a deadline of %s took %s", cfg.Deadline, el)
	}
	if !errors.Is(err, replay.ErrReplayTimeout) || rep.Verdict != replay.VerdictTimeout ||
		err.Error() != "replay of interval 0 did not reach icount 1744759 within 300ms" {
		t.Errorf("%v, verdict %s", err, rep.Verdict)
	}
	noChildren(t)
}

func TestDefaultDeadline(t *testing.T) {
	if d := replay.DefaultDeadline(1e8); d != replay.DefaultDeadlineMin {
		t.Errorf("1e8 instructions: %s", d)
	}
	if d := replay.DefaultDeadline(1e12); d != time.Minute+1e6*time.Second {
		t.Errorf("1e12 instructions: %s", d)
	}
}

func noChildren(t *testing.T) {
	t.Helper()
	tasks, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range tasks {
		if data, err := os.ReadFile(f); err == nil && strings.TrimSpace(string(data)) != "" {
			t.Errorf("child processes left: %s", data)
		}
	}
}

func TestRunNotVerified(t *testing.T) {
	mnt := detRun(t)
	var seen []int
	cfg := replay.RunConfig{Mount: mnt, Run: "d", Jobs: 2, Compare: true,
		QEMU:       fakeQEMU(t, `echo "qemu-system-x86_64: no" >&2; exit 1`),
		OnInterval: func(r replay.IntervalReport) { seen = append(seen, r.Interval) }}
	rep, err := replay.Run(context.Background(), cfg)
	if !errors.Is(err, replay.ErrNotVerified) || !strings.Contains(err.Error(), "2 of 2 replays of run d not verified; the first: QEMU exited") {
		t.Errorf("%v", err)
	}
	if len(rep.Sparse.Intervals) != 1 || rep.Full == nil || len(rep.Full.Intervals) != 1 || rep.AllVerified ||
		rep.Sparse.Intervals[0].Verdict != replay.VerdictFailed || rep.Full.Intervals[0].Source != "full" || len(seen) != 2 {
		t.Errorf("%+v", rep)
	}
	// W_0 (16 frames) was tracked while its QEMU ran: 64 KiB over two
	// jobs of 4 MiB. No interval verified, so no mean.
	if rep.PeakWSRatio != 16*4096/(2*4194304.0) || rep.WSRatio != 0 {
		t.Errorf("W/RAM: peak %v, mean %v", rep.PeakWSRatio, rep.WSRatio)
	}
	var b strings.Builder
	rep.Table(&b)
	if !strings.Contains(b.String(), "NOT all verified") || !strings.Contains(b.String(), "interval 0: QEMU exited") {
		t.Errorf("table:\n%s", b.String())
	}
	cfg.Run = "nope"
	if _, err := replay.Run(context.Background(), cfg); !errors.Is(err, replay.ErrRunNotFound) {
		t.Errorf("no run: %v", err)
	}
}
