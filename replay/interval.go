package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// Sentinel errors of Interval and Run; the errors carry one readable line
// and wrap these for errors.Is.
var (
	ErrNotDeterministic = errors.New("replay: run is not deterministic")
	ErrNoNextCheckpoint = errors.New("replay: interval has no next checkpoint")
	ErrLogNotReady      = errors.New("replay: replay log is incomplete")
	ErrNoPlugin         = errors.New("replay: plugin not found")
	ErrReplayTimeout    = errors.New("replay: deadline passed")
	ErrQEMUExited       = errors.New("replay: QEMU exited")
	ErrDiverged         = errors.New("replay: interval diverged")
	ErrNotVerified      = errors.New("replay: not every interval verified")
)

// Verdicts of an interval's replay.
const (
	VerdictVerified = "verified" // icount reached, W_i equals checkpoint i+1, no misses
	VerdictDiverged = "diverged" // the replay ran but ended somewhere else
	VerdictTimeout  = "timeout"  // the deadline passed (QEMU killed)
	VerdictFailed   = "failed"   // could not replay: bad input, QEMU died, ...
)

// DefaultDeadlineMin is the least default deadline of one interval's replay.
const DefaultDeadlineMin = 10 * time.Minute

// deadlineFloorRate is the slowest execution a default deadline allows for:
// instructions per second. TCG replays run tens of millions of instructions
// a second; 1 M/s leaves room for many replays sharing few cores.
const deadlineFloorRate = 1e6

// DefaultDeadline is the deadline of the replay of an interval of n
// instructions when IntervalConfig.Deadline is 0: 60 s for starting QEMU
// and loading the checkpoint plus 1 s per million instructions, and at
// least DefaultDeadlineMin. A replay that diverged never stops by itself,
// so a deadline that is too long costs only time, one that is too short a
// false "timeout".
func DefaultDeadline(instructions uint64) time.Duration {
	d := time.Minute + time.Duration(float64(instructions)/deadlineFloorRate*float64(time.Second))
	return max(d, DefaultDeadlineMin)
}

// IntervalConfig describes the deterministic replay of one interval.
type IntervalConfig struct {
	Mount    string
	Run      string
	Interval int
	// Full starts from full/<I>.ram instead of the sparse <I>.ram.
	Full bool
	// WSPlugin is ckptfs's working-set plugin (kvmrec/wsplugin), or "".
	// When set it is loaded with random=on: a fault then reads only its own
	// page, not holes around it, so the mount's misses are exactly the holes
	// the replay touched.
	WSPlugin string
	// Preload makes QEMU read the whole RAM file before the replay starts,
	// as a restore that loads a full checkpoint does: the baseline that
	// sparse replays are measured against.
	Preload bool
	// Plugins are -plugin values "SO[,ARGS]", appended in order. Each SO
	// must exist.
	Plugins []string
	// PrecisionPlugin, when set, is the working-set plugin (ckptfs-ws.so):
	// it is loaded into the replay with mem=on, and the report's Touched
	// compares the frames the replay touched with W_I.
	PrecisionPlugin string
	// QEMU binary; default qemu-system-x86_64 from $PATH.
	QEMU string
	// Deadline bounds the whole replay, from QEMU's start to the end of
	// the verification; 0 means DefaultDeadline(instructions).
	Deadline time.Duration
	Logger   *slog.Logger

	// track, when set, is told QEMU's pid when it starts and again (with
	// running false) when the replay stopped or QEMU is gone: Run sums the
	// memory of the replays in between.
	track func(pid int, running bool, wsBytes uint64)
}

// IntervalReport is the result of one interval's replay. Times are in
// nanoseconds in JSON.
type IntervalReport struct {
	Run      string `json:"run"`
	Interval int    `json:"interval"`
	Source   string `json:"source"` // "sparse" (<I>.ram) or "full" (full/<I>.ram)
	// LoadTime: QEMU's exec to the incoming migration of <I>.dev completed.
	LoadTime time.Duration `json:"load_ns"`
	// ReplayTime: cont to the STOP at the target instruction count.
	ReplayTime time.Duration `json:"replay_ns"`
	// VerifyTime: reading and comparing W_I's frames.
	VerifyTime time.Duration `json:"verify_ns"`
	// Total: the whole call, checks and clean-up included.
	Total time.Duration `json:"total_ns"`
	// Instructions = TargetICount - StartICount.
	Instructions  uint64 `json:"instructions"`
	StartICount   uint64 `json:"start_icount"`
	TargetICount  uint64 `json:"target_icount"`
	ReachedICount uint64 `json:"reached_icount"`
	// Misses and MissFrames: growth of <I>.json's mount counters over the
	// replay up to its STOP, or until it was killed (reads of holes of
	// <I>.ram, by anybody).
	Misses     uint64 `json:"misses"`
	MissFrames uint64 `json:"miss_frames"`
	// VerifyHoleReads counts reads of holes of <I>.ram after the STOP,
	// while W_I was read through QEMU's mapping for the verification: the
	// verifier's (the mount logs their pid), not the stopped replay's, so
	// they do not change the verdict.
	VerifyHoleReads uint64 `json:"verify_hole_reads,omitempty"`
	// CountersKnown is false when <I>.json has no mount counters (not a
	// ckptfs mount); misses are then 0 but unknown.
	CountersKnown bool `json:"counters_known"`
	// FramesVerified is |W_I|, when the comparison ran to its end.
	FramesVerified  uint64 `json:"frames_verified"`
	DifferingFrames uint64 `json:"differing_frames"`
	// FirstDifferingPFN is set when a frame differs.
	FirstDifferingPFN *uint64 `json:"first_differing_pfn,omitempty"`
	Verdict           string  `json:"verdict"`
	// PeakRSS is QEMU's VmHWM when the replay stopped (before the
	// verification, whose reads fault W_I's frames into QEMU), or right
	// before it was killed.
	PeakRSS  uint64        `json:"peak_rss_bytes"`
	Deadline time.Duration `json:"deadline_ns"`
	Error    string        `json:"error,omitempty"`
	QEMUArgs []string      `json:"qemu_args,omitempty"` // binary first
	// Touched is set with IntervalConfig.PrecisionPlugin, as far as the
	// replay ran (also when it spun until the deadline).
	Touched *TouchReport `json:"touched,omitempty"`
}

// Verified reports whether the replay was verified.
func (r *IntervalReport) Verified() bool { return r.Verdict == VerdictVerified }

// replayError is an error with one readable line that wraps a sentinel.
type replayError struct {
	kind error
	msg  string
}

func (e *replayError) Error() string { return e.msg }

func (e *replayError) Unwrap() error { return e.kind }

func errorf(kind error, format string, args ...any) error {
	return &replayError{kind: kind, msg: fmt.Sprintf(format, args...)}
}

// Interval replays interval cfg.Interval of a deterministic run and
// verifies it: a new QEMU with the recording's machine (run.json
// "qemu_args", what the recorder added removed), RAM mapped from <I>.ram
// (share=off) or full/<I>.ram, -icount rr=replay on the mount's replay.log,
// the device state of <I>.dev loaded with migrate-incoming, then
// replay-break at checkpoint I+1's instruction count, cont, and the wait
// for STOP. Verified means: query-replay gives that instruction count,
// every frame of W_I in QEMU's RAM (read through /proc/PID/mem) equals
// full/<I+1>.ram, <I>.json's miss counters did not grow and, with
// PrecisionPlugin, the replay touched no frame outside W_I.
//
// The report is filled as far as the replay got, also on error. The error
// is nil only when the verdict is "verified"; it is one line that wraps
// ErrNotDeterministic, ErrNoNextCheckpoint, ErrLogNotReady, ErrNoPlugin,
// ErrReplayTimeout, ErrQEMUExited, ErrDiverged or one of layout's errors.
// Everything runs under the deadline: QEMU is killed (SIGKILL: a diverged
// replay ignores SIGTERM) and reaped, and its temporary directory removed,
// before Interval returns.
func Interval(ctx context.Context, cfg IntervalConfig) (IntervalReport, error) {
	t0 := time.Now()
	rep := IntervalReport{Run: cfg.Run, Interval: cfg.Interval, Source: "sparse", Verdict: VerdictFailed}
	if cfg.Full {
		rep.Source = "full"
	}
	err := replayInterval(ctx, cfg, &rep)
	rep.Total = time.Since(t0)
	if err != nil {
		rep.Error = err.Error()
		if rep.Verdict == VerdictVerified {
			rep.Verdict = VerdictFailed
		}
	}
	return rep, err
}

func replayInterval(ctx context.Context, cfg IntervalConfig, rep *IntervalReport) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Mount != "" {
		if abs, err := filepath.Abs(cfg.Mount); err == nil {
			cfg.Mount = abs
		}
	}
	p, err := planInterval(cfg, rep)
	if err != nil {
		return err
	}
	i := cfg.Interval
	rep.Deadline = p.deadline
	rep.CountersKnown = p.countersKnow
	dctx, cancel := context.WithTimeout(ctx, p.deadline)
	defer cancel()
	timeoutErr := func() error {
		if ctx.Err() != nil {
			return fmt.Errorf("replay of interval %d: %w", i, ctx.Err())
		}
		rep.Verdict = VerdictTimeout
		return errorf(ErrReplayTimeout, "replay of interval %d did not reach icount %d within %s", i, p.tgt, p.deadline)
	}

	tmp, err := os.MkdirTemp("", "ckptfs-interval-")
	if err != nil {
		return fmt.Errorf("replay: %v", err)
	}
	defer os.RemoveAll(tmp)
	sock := filepath.Join(tmp, "qmp.sock")
	plugins, readAround := cfg.Plugins, cfg.WSPlugin
	var touch *touchCounters
	if cfg.PrecisionPlugin != "" {
		if touch, err = newTouchCounters(tmp, p.rd.frames()); err != nil {
			return fmt.Errorf("replay: counters of the frames touched: %v", err)
		}
		// One instance of the plugin does both (a second load of the same
		// file would share its state).
		plugins = append(slices.Clip(plugins), touch.pluginArg(cfg.PrecisionPlugin, p.ramFile))
		readAround = ""
	}
	args, err := intervalArgs(intervalArgSpec{Recorded: p.recorded, RAMFile: p.ramFile, LogFile: p.logFile,
		RAMSize: p.rd.info.RAMSize, QMPSocket: sock, Plugins: plugins, Preload: cfg.Preload,
		ReadAround: readAround})
	if err != nil {
		return errorf(ErrNotDeterministic, "run %s is not deterministic: %v", cfg.Run, err)
	}
	rep.QEMUArgs = append([]string{p.qemu}, args...)
	log.Debug("replay interval", "run", cfg.Run, "interval", i, "source", rep.Source, "icount", p.tgt, "deadline", p.deadline,
		"args", strings.Join(rep.QEMUArgs, " "))

	var out tailbuf.Buffer
	cmd := exec.Command(p.qemu, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = tmp
	// A process group of its own: the kill takes QEMU's helpers (the
	// "exec:" migration's shell and cat) too. WaitDelay: a helper that
	// kept the output pipe open must not hold Wait.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	cmd.WaitDelay = time.Second
	tStart := time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("replay: start %s: %w", p.qemu, err)
	}
	pid := cmd.Process.Pid
	kill := func() { _ = syscall.Kill(-pid, syscall.SIGKILL); _ = cmd.Process.Kill() }
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	if cfg.track != nil {
		cfg.track(pid, true, p.frames*uint64(p.rd.pageSize()))
	}
	tracked := cfg.track != nil
	untrack := func() {
		if tracked {
			cfg.track(pid, false, 0)
			tracked = false
		}
	}
	// readAfter fills the misses (or, after a STOP, the verifier's hole
	// reads) and rep.Touched once QEMU is gone (before tmp is removed),
	// also when the replay failed or was killed.
	readDone, stopped := false, false
	readMisses := func() {
		if p.countersKnow {
			if c, err := readCheckpointJSON(p.statFile); err == nil && c.Mount != nil {
				rep.Misses = c.Mount.Misses - p.misses
				rep.MissFrames = c.Mount.MissFrames - p.missFrames
			}
		}
	}
	readAfter := func() {
		if readDone {
			return
		}
		readDone = true
		if !stopped {
			readMisses()
		} else if c, err := readCheckpointJSON(p.statFile); err == nil && c.Mount != nil && p.countersKnow {
			// Reads of holes after the STOP are the verifier's, through
			// QEMU's mapping, not the replay's.
			if n := c.Mount.Misses - p.misses - rep.Misses; n > 0 {
				rep.VerifyHoleReads = n
				log.Debug("replay interval: the verification read holes", "interval", i, "reads", n)
			}
		}
		if touch != nil {
			t, err := touch.report(p.runs, p.frames)
			if err != nil {
				log.Warn("replay interval: frames touched unknown", "interval", i, "err", err)
			}
			rep.Touched = t
		}
	}
	var client *qmp.Client
	peakKnown := false
	var tCont time.Time
	defer func() {
		if !tCont.IsZero() && rep.ReplayTime == 0 {
			rep.ReplayTime = time.Since(tCont) // cont to the kill
		}
		if !peakKnown {
			if hwm, ok := procStatusKB(pid, "VmHWM"); ok {
				rep.PeakRSS = hwm
			}
		}
		untrack()
		if client != nil {
			client.Close()
		}
		kill()
		<-done
		readAfter()
	}()
	exited := func(while string) error {
		<-done
		return errorf(ErrQEMUExited, "QEMU exited %s of interval %d: %s", while, i, qemuLastLine(out.String(), waitErr))
	}
	// failed classifies an error of a step: QEMU gone, deadline, or other.
	failed := func(while string, err error) error {
		select {
		case <-done:
			return exited(while)
		default:
		}
		if dctx.Err() != nil {
			return timeoutErr()
		}
		if errors.Is(err, qmp.ErrClosed) {
			select {
			case <-done:
				return exited(while)
			case <-time.After(time.Second):
			}
		}
		return fmt.Errorf("replay of interval %d: %v: %s", i, err, out.LastLines(3))
	}

	if client, err = qmp.DialStarting(dctx, sock, done); err != nil {
		return failed("while loading the checkpoint", err)
	}
	if err := client.Execute(dctx, "migrate-incoming", map[string]string{"uri": "exec:cat " + shellQuote(p.devFile)}, nil); err != nil {
		return failed("while loading the checkpoint", err)
	}
	if err := waitIncoming(dctx, client); err != nil {
		return failed("while loading the checkpoint", err)
	}
	rep.LoadTime = time.Since(tStart)
	var rs struct {
		Mode   string `json:"mode"`
		ICount uint64 `json:"icount"`
	}
	if err := client.Execute(dctx, "query-replay", nil, &rs); err != nil {
		return failed("while loading the checkpoint", err)
	}
	if rs.Mode != "play" { // QAPI ReplayMode: none, record, play
		return fmt.Errorf("replay of interval %d: QEMU is in replay mode %q, not \"play\"", i, rs.Mode)
	}
	if rs.ICount != p.start {
		log.Warn("replay interval: loaded icount differs from the checkpoint's", "interval", i, "loaded", rs.ICount, "checkpoint", p.start)
	}
	client.DiscardEvents("STOP")
	if err := client.Execute(dctx, "replay-break", map[string]uint64{"icount": p.tgt}, nil); err != nil {
		return failed("during the replay", err)
	}
	tCont = time.Now()
	if err := client.Execute(dctx, "cont", nil, nil); err != nil {
		return failed("during the replay", err)
	}
	if _, err := client.WaitEvent(dctx, "STOP"); err != nil {
		return failed("during the replay", err)
	}
	rep.ReplayTime = time.Since(tCont)
	if hwm, ok := procStatusKB(pid, "VmHWM"); ok {
		rep.PeakRSS, peakKnown = hwm, true
	}
	untrack()
	if err := client.Execute(dctx, "query-replay", nil, &rs); err != nil {
		return failed("during the replay", err)
	}
	rep.ReachedICount = rs.ICount
	// The replay's misses: counted now, while QEMU is stopped, before the
	// verification reads W_i through QEMU's mapping.
	readMisses()
	stopped = true
	log.Debug("replay interval stopped", "interval", i, "icount", rs.ICount, "load", rep.LoadTime, "replay", rep.ReplayTime)

	// Verify W_i against checkpoint i+1 while QEMU is stopped.
	tv := time.Now()
	v, verr := verifyFrames(dctx, pid, p.ramFile, p.refFile, p.runs, p.rd.pageSize(), p.rd.info.RAMSize)
	rep.VerifyTime = time.Since(tv)
	rep.DifferingFrames = v.differing
	if v.differing > 0 {
		first := v.first
		rep.FirstDifferingPFN = &first
	}
	if verr == nil {
		rep.FramesVerified = v.compared
	}
	// Kill QEMU before reading the counters: nothing reads after that.
	kill()
	<-done
	readAfter()
	if verr != nil {
		if dctx.Err() != nil {
			return timeoutErr()
		}
		return fmt.Errorf("replay of interval %d: verifying: %v", i, verr)
	}
	switch {
	case rep.ReachedICount != p.tgt:
		rep.Verdict = VerdictDiverged
		return errorf(ErrDiverged, "interval %d diverged: the replay stopped at icount %d, not %d", i, rep.ReachedICount, p.tgt)
	case v.differing > 0:
		rep.Verdict = VerdictDiverged
		return errorf(ErrDiverged, "interval %d diverged: frame %#x differs from checkpoint %d (%d of %d frames differ)",
			i, v.first, i+1, v.differing, v.compared)
	case rep.Misses > 0:
		rep.Verdict = VerdictDiverged
		return errorf(ErrDiverged, "interval %d left its working set: %d reads of holes of %s (%d frames)", i, rep.Misses, p.ramFile, rep.MissFrames)
	case rep.Touched != nil && rep.Touched.OutsideWS > 0:
		// A read the page cache answered is no miss; the plugin saw it.
		rep.Verdict = VerdictDiverged
		return errorf(ErrDiverged, "interval %d left its working set: it touched %d frames outside W_%d (first pfn %#x)",
			i, rep.Touched.OutsideWS, i, rep.Touched.FirstOutside[0])
	}
	rep.Verdict = VerdictVerified
	return nil
}

// qemuLastLine returns the last line QEMU printed that is not known noise,
// or its exit status.
func qemuLastLine(out string, waitErr error) string {
	line := ""
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for k := len(lines) - 1; k >= 0; k-- {
		l := strings.TrimSpace(lines[k])
		if l != "" && !strings.Contains(l, "Expected vmdescription section") {
			line = l
			break
		}
	}
	switch {
	case line == "" && waitErr == nil:
		return "exit status 0"
	case line == "":
		return waitErr.Error()
	case waitErr != nil:
		return line + " (" + waitErr.Error() + ")"
	}
	return line
}
