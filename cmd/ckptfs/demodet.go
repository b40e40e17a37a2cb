package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/kvmrec"
	"github.com/ckptfs/ckptfs/replay"
	"github.com/urfave/cli/v2"
)

// demoReplays is the outcome of the demo's deterministic part: a run
// recorded with record --deterministic and replay run's report on it.
type demoReplays struct {
	run  string
	json string // replay run --json
	rep  replay.RunReport
}

// demoDeterministic records the QEMU guest again, this time in QEMU's
// record mode (as record --deterministic does), and replays every interval
// from its sparse checkpoint with replay run, as a process of its own. An
// error means the demo could not get that far; replays that were not
// verified are in the result, for verdict and err.
func demoDeterministic(c *cli.Context, st *index.Store, g *demoGuest, run, mnt, dir string, say func(string, ...any)) (*demoReplays, error) {
	plugin := wsPlugin(c)
	if _, err := os.Stat(plugin); err != nil {
		return nil, fmt.Errorf("the working-set plugin %s is missing (make builds it): %w", plugin, err)
	}
	say("2. deterministic recording (record --deterministic: QEMU TCG in record mode with the working-set plugin, from boot)")
	say("recording %d checkpoints of run %s every %s", c.Int("count"), run, c.Duration("interval"))
	cfg := kvmrec.DeterministicConfig{
		Config: kvmrec.Config{Run: run, Interval: c.Duration("interval"), Count: c.Int("count"), Logger: slog.Default(),
			OnCheckpoint: func(s kvmrec.CheckpointStats) { say("%s", formatCheckpoint(s)) }},
		MachineArgs: append(append([]string(nil), g.machineArgs...), "-serial", "file:"+filepath.Join(filepath.Dir(g.serial), "det-serial.log")),
		Plugin:      plugin,
	}
	sum, err := kvmrec.RecordDeterministic(c.Context, st, cfg)
	if err != nil {
		return nil, fmt.Errorf("deterministic recording: %w", err)
	}
	say("recorded %d checkpoints; downtime median %s, p99 %s; %s stored", sum.Checkpoints,
		sum.MedianDowntime.Round(10*time.Microsecond), sum.P99Downtime.Round(10*time.Microsecond), humanBytes(sum.BytesStored))
	if err := packRun(c, localStore{st}, run); err != nil {
		return nil, err
	}

	d := &demoReplays{run: run, json: filepath.Join(dir, "replay.json")}
	os.Remove(d.json)
	say("replaying every interval of %s from its sparse checkpoint <I>.ram, %d at a time, each verified against the next checkpoint",
		run, c.Int("jobs"))
	cmd := exec.CommandContext(c.Context, selfPath(), "--log-level", c.String("log-level"), "replay", "run",
		"--mount", mnt, "--run", run, "--jobs", fmt.Sprint(c.Int("jobs")),
		"--deadline", c.Duration("replay-deadline").String(), "--precision", "--json", d.json)
	cmd.Stdout, cmd.Stderr = c.App.Writer, c.App.ErrWriter
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runErr := cmd.Run()
	data, err := os.ReadFile(d.json)
	if err != nil {
		// replay run writes its report whenever it replayed anything.
		var ee *exec.ExitError
		if errors.As(runErr, &ee) {
			return nil, &exitError{code: ee.ExitCode(), err: errAlreadyReported}
		}
		return nil, fmt.Errorf("replay run: %v", errors.Join(runErr, err))
	}
	if err := json.Unmarshal(data, &d.rep); err != nil {
		return nil, fmt.Errorf("replay run: %s: %v", d.json, err)
	}
	if d.rep.AllVerified != (runErr == nil) {
		return nil, fmt.Errorf("replay run exited with %v but its report says all verified: %v", runErr, d.rep.AllVerified)
	}
	return d, nil
}

// verdict is one line: how many replays verified and, when some did not,
// how they failed. Replays that left W_i are the known gap of
// deterministic working sets (README, "Limits").
func (d *demoReplays) verdict() string {
	p := d.rep.Sparse
	if p.AllVerified {
		return fmt.Sprintf("interval replays from sparse checkpoints: all %d verified", len(p.Intervals))
	}
	var spun, left, raced, differ, other int
	for _, r := range p.Intervals {
		switch {
		case r.Verified():
		case r.Verdict == replay.VerdictTimeout:
			spun++
		case r.DifferingFrames > 0 || (r.ReachedICount != r.TargetICount && r.Verdict == replay.VerdictDiverged):
			differ++
		case r.Misses > 0 && r.Touched != nil && r.Touched.OutsideWS == 0:
			raced++
		case r.Misses > 0 || (r.Touched != nil && r.Touched.OutsideWS > 0):
			left++
		default:
			other++
		}
	}
	var why []string
	if spun > 0 {
		why = append(why, fmt.Sprintf("%d spun until the deadline", spun))
	}
	if left > 0 {
		why = append(why, fmt.Sprintf("%d reached the next checkpoint with no frame different but left W_i", left))
	}
	if raced > 0 {
		why = append(why, fmt.Sprintf("%d reached it with no frame different but read holes of <I>.ram, touching no frame outside W_i the plugin sees", raced))
	}
	if differ > 0 {
		why = append(why, fmt.Sprintf("%d ended elsewhere or with frames different from the next checkpoint", differ))
	}
	if other > 0 {
		why = append(why, fmt.Sprintf("%d failed to run", other))
	}
	line := fmt.Sprintf("NOT VERIFIED: %d of %d interval replays from sparse checkpoints verified; %s.",
		p.Verified, len(p.Intervals), strings.Join(why, ", "))
	if spun+left+raced > 0 {
		line += " Spinning replays and reads of holes are the known gap of deterministic working sets (README, Limits)."
	}
	return line
}

// err is the demo's exit: nil when every replay verified (or none ran).
func (d *demoReplays) err() error {
	if d == nil || d.rep.Sparse.AllVerified {
		return nil
	}
	p := d.rep.Sparse
	return &exitError{code: 1, err: fmt.Errorf("demo: %d of %d interval replays of %s not verified (%s)",
		len(p.Intervals)-p.Verified, len(p.Intervals), d.run, d.json)}
}
