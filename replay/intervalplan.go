package replay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"github.com/ckptfs/ckptfs/internal/replaypos"
)

// readRunMeta reads what a deterministic replay needs from run.json: the
// top-level "deterministic" and "qemu_args" (DESIGN.md), or, as the
// recorder of QEMU guests stores them, meta "deterministic" and meta
// "qemu_args" (a JSON list in a string).
func readRunMeta(dir string) (deterministic bool, args []string, err error) {
	data, err := os.ReadFile(filepath.Join(dir, "run.json"))
	if err != nil {
		return false, nil, err
	}
	var m struct {
		Deterministic json.RawMessage   `json:"deterministic"`
		QEMUArgs      json.RawMessage   `json:"qemu_args"`
		Meta          map[string]string `json:"meta"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return false, nil, fmt.Errorf("%s: %v", filepath.Join(dir, "run.json"), err)
	}
	det := string(m.Deterministic) == "true" || m.Meta["deterministic"] == "true"
	var list string
	if len(m.QEMUArgs) > 0 && string(m.QEMUArgs) != "null" {
		var s string
		if json.Unmarshal(m.QEMUArgs, &s) == nil {
			list = s
		} else {
			list = string(m.QEMUArgs)
		}
	} else {
		list = m.Meta[MetaQEMUArgs]
	}
	if args, err = parseArgList(list); err != nil {
		return det, nil, fmt.Errorf("%s: qemu_args: %v", filepath.Join(dir, "run.json"), err)
	}
	return det, args, nil
}

// checkpointJSON is what <i>.json says about a checkpoint: its instruction
// count (top-level "icount", or "checkpoint": {"icount"}) and the mount's
// counters.
type checkpointJSON struct {
	ICount *uint64 `json:"icount"`
	// Checkpoint is the checkpoint's number, or its stats with "icount".
	Checkpoint json.RawMessage `json:"checkpoint"`
	Mount      *struct {
		Misses     uint64 `json:"misses"`
		MissFrames uint64 `json:"miss_frames"`
	} `json:"mount"`
}

func readCheckpointJSON(path string) (checkpointJSON, error) {
	var c checkpointJSON
	data, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	if err := json.Unmarshal(data, &c); err != nil {
		return c, fmt.Errorf("%s: %v", path, err)
	}
	return c, nil
}

func (c checkpointJSON) icount() (uint64, bool) {
	if c.ICount != nil {
		return *c.ICount, true
	}
	var st struct {
		ICount *uint64 `json:"icount"`
	}
	if len(c.Checkpoint) > 0 && c.Checkpoint[0] == '{' && json.Unmarshal(c.Checkpoint, &st) == nil && st.ICount != nil {
		return *st.ICount, true
	}
	return 0, false
}

// intervalPlan is everything checked before QEMU starts.
type intervalPlan struct {
	rd           *runDir
	ramFile      string
	refFile      string // full/<i+1>.ram
	devFile      string
	logFile      string
	statFile     string
	start, tgt   uint64
	runs         []frameRun
	frames       uint64
	args         []string // without the binary; QMP socket filled in later
	recorded     []string
	qemu         string
	deadline     time.Duration
	misses       uint64
	missFrames   uint64
	countersKnow bool
}

// planInterval checks the run and the interval and reads what the replay
// needs; it starts nothing.
func planInterval(cfg IntervalConfig, rep *IntervalReport) (*intervalPlan, error) {
	rd, err := openRun(cfg.Mount, cfg.Run)
	if err != nil {
		return nil, err
	}
	i := cfg.Interval
	if i < 0 {
		return nil, fmt.Errorf("%w: interval %d", ErrBadConfig, i)
	}
	det, recorded, err := readRunMeta(rd.dir)
	if err != nil {
		return nil, fmt.Errorf("replay: %v", err)
	}
	if !det {
		return nil, errorf(ErrNotDeterministic, "run %s is not deterministic: record it with ckptfs record --deterministic", cfg.Run)
	}
	p := &intervalPlan{rd: rd, recorded: recorded, refFile: rd.fullPath(i + 1), devFile: rd.devPath(i),
		logFile: filepath.Join(rd.dir, "replay.log"), statFile: rd.statPath(i)}
	p.ramFile = rd.ramPath(i)
	if cfg.Full {
		p.ramFile = rd.fullPath(i)
	}
	if _, err := os.Stat(rd.fullPath(i)); err != nil {
		return nil, fmt.Errorf("%w: run %s has no checkpoint %d (%s missing)", ErrNoCheckpoint, cfg.Run, i, rd.fullPath(i))
	}
	if _, err := os.Stat(p.refFile); err != nil {
		return nil, errorf(ErrNoNextCheckpoint, "interval %d of run %s has no end yet: checkpoint %d is not committed (%s missing)", i, cfg.Run, i+1, p.refFile)
	}
	if _, err := os.Stat(rd.wsPath(i)); err != nil {
		return nil, fmt.Errorf("%w: interval %d of run %s has no working set (%s missing)", ErrNoWorkingSet, i, cfg.Run, rd.wsPath(i))
	}
	if err := rd.checkRAMFile(p.ramFile); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s missing", ErrNoWorkingSet, p.ramFile)
		}
		return nil, fmt.Errorf("replay: %w", err)
	}
	if err := rd.checkRAMFile(p.refFile); err != nil {
		return nil, fmt.Errorf("replay: %w", err)
	}
	if _, err := os.Stat(p.devFile); err != nil {
		return nil, fmt.Errorf("%w: checkpoint %d of run %s has no device state (%s missing)", ErrNoDeviceState, i, cfg.Run, p.devFile)
	}
	// Instruction counts.
	cur, err := readCheckpointJSON(p.statFile)
	if err != nil {
		return nil, fmt.Errorf("replay: %v", err)
	}
	next, err := readCheckpointJSON(rd.statPath(i + 1))
	if err != nil {
		return nil, fmt.Errorf("replay: checkpoint %d: %v", i+1, err)
	}
	var ok1, ok2 bool
	p.start, ok1 = cur.icount()
	p.tgt, ok2 = next.icount()
	if !ok1 || !ok2 {
		return nil, errorf(ErrNotDeterministic, "run %s is not deterministic: %s or %s has no icount", cfg.Run, p.statFile, rd.statPath(i+1))
	}
	if p.tgt < p.start {
		return nil, fmt.Errorf("replay: checkpoint %d has icount %d, below checkpoint %d's %d", i+1, p.tgt, i, p.start)
	}
	rep.StartICount, rep.TargetICount, rep.Instructions = p.start, p.tgt, p.tgt-p.start
	if cur.Mount != nil {
		p.misses, p.missFrames, p.countersKnow = cur.Mount.Misses, cur.Mount.MissFrames, true
	}
	// The log must hold what the replay reads up to checkpoint i+1.
	nextDev := rd.devPath(i + 1)
	devData, err := os.ReadFile(nextDev)
	if err != nil {
		return nil, fmt.Errorf("%w: checkpoint %d of run %s has no device state (%s), so the log position of the interval's end is unknown",
			ErrNoDeviceState, i+1, cfg.Run, nextDev)
	}
	pos, err := replaypos.Parse(devData)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, nextDev)
	}
	if pos.ICount != p.tgt {
		return nil, errorf(ErrBadConfig, "checkpoint %d of run %s is inconsistent: %s says icount %d, %s says %d", i+1, cfg.Run, nextDev, pos.ICount, rd.statPath(i+1), p.tgt)
	}
	lf, err := os.Stat(p.logFile)
	if err != nil {
		return nil, errorf(ErrLogNotReady, "run %s has no replay log (%s missing)", cfg.Run, p.logFile)
	}
	if uint64(lf.Size()) <= pos.LogOffset {
		return nil, errorf(ErrLogNotReady, "interval %d is not replayable yet: QEMU has written %d of the %d log bytes it needs",
			i, lf.Size(), pos.LogOffset+1)
	}
	plugins := cfg.Plugins
	if cfg.PrecisionPlugin != "" {
		plugins = append(slices.Clip(plugins), cfg.PrecisionPlugin)
	}
	for _, pl := range plugins {
		so := pluginFile(pl)
		st, err := os.Stat(so)
		if err != nil || !st.Mode().IsRegular() {
			what := "no such file"
			if err == nil {
				what = "not a regular file"
			}
			return nil, errorf(ErrNoPlugin, "plugin %s: %s", so, what)
		}
	}
	bin := cfg.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	if p.qemu, err = exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("%w: %s: %v (install qemu-system-x86, or give its path)", ErrNoQEMU, bin, err)
	}
	if p.runs, p.frames, err = readRuns(rd.wsPath(i), rd.frames()); err != nil {
		return nil, fmt.Errorf("replay: %v", err)
	}
	p.deadline = cfg.Deadline
	if p.deadline <= 0 {
		p.deadline = DefaultDeadline(rep.Instructions)
	}
	return p, nil
}
