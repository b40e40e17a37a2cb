package kvmrec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/qemuargs"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// DeterministicConfig describes a recording of a QEMU that the recorder
// starts itself in record mode, so that every interval can be replayed
// exactly (see doc.go, "Deterministic runs").
type DeterministicConfig struct {
	Config // Run, Interval, Count, Duration, Logger, ...; QMPSocket and MemPath are set here

	QEMU string // binary; default qemu-system-x86_64
	// MachineArgs are the user's QEMU arguments: machine, devices, kernel.
	// They must give the RAM size with -m and leave RAM backend, QMP,
	// -icount and -incoming to the recorder.
	MachineArgs []string
	// Plugin is the working-set plugin (ckptfs-ws.so, built from
	// kvmrec/wsplugin by make).
	Plugin string
	// ScratchDir holds guest RAM, the log and sockets while recording;
	// it must be on tmpfs. Default /dev/shm.
	ScratchDir string
	// Stderr receives QEMU's output (default: kept for errors only).
	Stderr *os.File
}

// recordedBy lists the arguments that the recorder adds and so refuses from
// the user.
var recordedBy = []string{"-icount", "-qmp", "-incoming", "-mem-path", "-daemonize"}

// ramSizeArg returns the RAM size that QEMU arguments give with -m.
func ramSizeArg(args []string) (uint64, error) {
	for k := 0; k+1 < len(args); k++ {
		if strings.TrimLeft(args[k], "-") != "m" {
			continue
		}
		n, err := qemuargs.MemSize(args[k+1])
		if err != nil {
			return 0, fmt.Errorf("%w: cannot read the RAM size from -m %s", ErrBadConfig, args[k+1])
		}
		return n, nil
	}
	return 0, fmt.Errorf("%w: the QEMU arguments must give the RAM size with -m", ErrBadConfig)
}

func (cfg *DeterministicConfig) checkArgs() error {
	for _, a := range cfg.MachineArgs {
		name := "-" + strings.TrimLeft(a, "-")
		for _, bad := range recordedBy {
			if name == bad {
				return fmt.Errorf("%w: leave %s to ckptfs record --deterministic", ErrBadConfig, bad)
			}
		}
		if strings.Contains(a, "memory-backend") {
			return fmt.Errorf("%w: leave the RAM backend to ckptfs record --deterministic (give -m only)", ErrBadConfig)
		}
	}
	if cfg.Plugin == "" {
		return fmt.Errorf("%w: the working-set plugin is required", ErrBadConfig)
	}
	if _, err := os.Stat(cfg.Plugin); err != nil {
		return fmt.Errorf("%w: the working-set plugin: %v (make builds it)", ErrBadConfig, err)
	}
	return nil
}

// detState is what a deterministic recording adds to the recorder.
type detState struct {
	dir     string
	exec    *execCounters
	trial   *restoreTrial
	log     *logFollower
	pending chan trialResult // the restore trial of the last checkpoint taken
	noChain bool             // TCG block chaining is off (tbflush.go)
}

type trialResult struct {
	frames []span
	err    error
}

// startTrial measures the restore set of checkpoint i in the background and
// returns the trial of the checkpoint before, whose set belongs to the
// working set that checkpoint i commits.
func (d *detState) startTrial(ctx context.Context, i int, dev []byte) chan trialResult {
	prev := d.pending
	ch := make(chan trialResult, 1)
	go func() {
		frames, err := d.trial.run(context.WithoutCancel(ctx), i, dev)
		ch <- trialResult{frames, err}
	}()
	d.pending = ch
	return prev
}

func (d *detState) close() {
	if d == nil {
		return
	}
	if d.pending != nil {
		<-d.pending
	}
	d.exec.close()
	d.log.close()
}

// RecordDeterministic starts QEMU in record mode with the user's machine
// arguments plus what recording needs, records it like Record, and ends
// QEMU after the last checkpoint, so that its replay log is complete in the
// store. Each W_i holds the frames the host page table saw touched, the
// frames whose code ran (the working-set plugin), and the frames QEMU
// touches when it restores checkpoint i (a restore trial), so that a replay
// from <i>.ram reads no hole.
func RecordDeterministic(ctx context.Context, st *index.Store, cfg DeterministicConfig) (Summary, error) {
	// Placeholders until QEMU runs: the check wants them.
	cfg.QMPSocket, cfg.MemPath = "-", "-"
	if err := cfg.check(); err != nil {
		return Summary{}, err
	}
	if err := cfg.checkArgs(); err != nil {
		return Summary{}, err
	}
	ramSize, err := ramSizeArg(cfg.MachineArgs)
	if err != nil {
		return Summary{}, err
	}
	if _, err := st.Run(cfg.Run); err == nil {
		return Summary{}, fmt.Errorf("%w: %q", index.ErrRunExists, cfg.Run)
	} else if !errors.Is(err, index.ErrRunNotFound) {
		return Summary{}, err
	}
	if cfg.QEMU == "" {
		cfg.QEMU = "qemu-system-x86_64"
	}
	if cfg.ScratchDir == "" {
		cfg.ScratchDir = "/dev/shm"
	}
	dir, err := os.MkdirTemp(cfg.ScratchDir, "ckptfs-record-")
	if err != nil {
		return Summary{}, fmt.Errorf("scratch directory for the recording: %w", err)
	}
	defer os.RemoveAll(dir)
	header, err := probeReplayHeader(ctx, cfg.QEMU, dir)
	if err != nil {
		return Summary{}, err
	}
	ramPath := filepath.Join(dir, "ram")
	logPath := filepath.Join(dir, "replay.log")
	sock := filepath.Join(dir, "qmp.sock")
	counters := filepath.Join(dir, "exec.counters")
	f, err := os.OpenFile(ramPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return Summary{}, err
	}
	err = f.Truncate(int64(ramSize))
	f.Close()
	if err != nil {
		return Summary{}, fmt.Errorf("guest RAM file: %w", err)
	}
	ec, err := createExecCounters(counters, ramSize/pageSize)
	if err != nil {
		return Summary{}, err
	}
	det := &detState{dir: dir, exec: ec, trial: &restoreTrial{binary: cfg.QEMU, machineArgs: cfg.MachineArgs,
		ramSize: ramSize, ramPath: ramPath, plugin: cfg.Plugin, dir: dir, timeout: time.Minute}}
	defer det.close()

	args := append(append([]string(nil), cfg.MachineArgs...),
		"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%d,mem-path=%s,share=on", ramSize, ramPath),
		"-machine", "memory-backend=ram0",
		"-icount", "shift=auto,rr=record,rrfile="+logPath,
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-plugin", fmt.Sprintf("%s,ram=%s,counters=%s", cfg.Plugin, ramPath, counters))
	cmd := exec.Command(cfg.QEMU, args...)
	out := tailbuf.Buffer{Max: 4096}
	cmd.Stdout, cmd.Stderr = &out, &out
	if cfg.Stderr != nil {
		cmd.Stdout, cmd.Stderr = cfg.Stderr, cfg.Stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return Summary{}, fmt.Errorf("starting QEMU: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
	}()
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	c, err := qmp.DialStarting(dctx, sock, exited)
	cancel()
	if err != nil {
		return Summary{}, fmt.Errorf("starting QEMU: %w: %s", err, out.LastLine())
	}
	c.Close() // the recorder dials its own connection
	// The plugin says when it cannot turn fault-around off (working sets
	// then hold 64 KiB blocks) or cannot find guest RAM (no code counted).
	for _, l := range out.LinesWith("ckptfs-ws:") {
		cfg.Logger.Warn("working-set plugin: "+strings.TrimPrefix(l, "ckptfs-ws: "), "run", cfg.Run)
	}
	if det.log, err = openLogFollower(logPath, header); err != nil {
		return Summary{}, err
	}

	cfg.QMPSocket, cfg.MemPath = sock, ramPath
	cfg.Tracker = TrackerPagemap
	cfg.ExactWorkingSets = true // the deferred unmapping would add the frames changed in the pause to the next W
	cfg.DeviceState = false     // saved with xen-save-devices-state instead
	meta := map[string]string{"deterministic": "true"}
	for k, v := range cfg.Meta {
		meta[k] = v
	}
	cfg.Meta = meta
	return record(ctx, st, cfg.Config, det, func(c *qmp.Client, w *index.RunWriter) error {
		return endRecordedQEMU(ctx, c, exited, det.log, w)
	})
}

// endRecordedQEMU quits QEMU, so that it writes the rest of its log, and
// stores that rest, marking the log complete.
func endRecordedQEMU(ctx context.Context, c *qmp.Client, exited <-chan struct{}, log *logFollower, w *index.RunWriter) error {
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	_ = c.Execute(qctx, "quit", nil, nil) // QEMU may close the connection before it answers
	select {
	case <-exited:
	case <-qctx.Done():
		return errors.New("QEMU did not exit after quit: its replay log is incomplete")
	}
	tail, err := log.finish()
	if err != nil {
		return err
	}
	return w.AppendReplayLog(context.WithoutCancel(ctx), tail, true)
}
