package replay

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/internal/qemuargs"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// MetaQEMUArgs is the run.json meta key that holds the QEMU arguments of the
// recording: a JSON array of strings, or arguments separated by white space.
const MetaQEMUArgs = "qemu_args"

// defaultBackendID is the memory backend id (and RAM block name) used when
// the arguments name none; it is what the recorder's QEMU guests use.
const defaultBackendID = "ram0"

// QEMUConfig describes a replay of checkpoint Interval of Run in QEMU.
type QEMUConfig struct {
	Mount    string
	Run      string
	Interval int
	// Sparse maps <I>.ram (W_I only, holes elsewhere read as zeros and
	// count as misses) instead of full/<I>.ram.
	Sparse bool

	QEMU  string // binary; default qemu-system-x86_64 from $PATH
	Accel string // "tcg" (default) or "kvm" (needs /dev/kvm)

	// RecordedArgs are the QEMU arguments of the recording (machine type,
	// devices, kernel, ...). nil means run.json's meta "qemu_args". Their
	// own RAM backend, -m, QMP, monitor, -incoming and accelerator are
	// dropped, and their -serial outputs are replaced (see SerialPath).
	RecordedArgs []string
	// Args are passed through after everything else, unchanged: whatever
	// the recording needs that RecordedArgs lacks.
	Args []string

	// RAMSize of the guest; 0 means run.json's ram_size. qemuArgs needs it.
	RAMSize uint64
	// BackendID of the memory backend; "" means the memory-backend= of a
	// -machine argument, else defaultBackendID. It must be the recording's.
	BackendID string
	// QMPSocket for QEMU's QMP; "" means one in a new temporary directory.
	QMPSocket string
	// SerialPath receives the guest's first serial port (-serial file:);
	// "" sends it to null. Other recorded serial ports go to null.
	SerialPath string
	// DevViaExec gives QEMU the device state as "exec:cat <I>.dev"
	// instead of an fd passed over QMP (getfd), which is faster.
	DevViaExec bool
	// Paused leaves the guest paused after the incoming migration.
	Paused bool

	// Stdout and Stderr also receive QEMU's output; it is kept for
	// errors and Output in any case.
	Stdout, Stderr io.Writer
	// Timeout bounds start-up: QMP up, incoming migration, cont. Default 60 s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// QEMUReplay is a running QEMU that continues a checkpoint.
type QEMUReplay struct {
	cfg     QEMUConfig
	cmd     *exec.Cmd
	args    []string // binary first
	qmp     *qmp.Client
	tmpDir  string
	out     tailbuf.Buffer
	done    chan struct{}
	waitErr error
	once    sync.Once

	// Timings of the start-up.
	Started   time.Duration // exec → QMP greeting
	Migration time.Duration // migrate-incoming → "completed"
	Ready     time.Duration // exec → guest running (or paused, with Paused)
}

// Pid returns QEMU's process id.
func (r *QEMUReplay) Pid() int { return r.cmd.Process.Pid }

// Args returns QEMU's command line, binary first.
func (r *QEMUReplay) Args() []string { return append([]string(nil), r.args...) }

// SerialPath returns the file that receives the guest's serial output, or
// "" when none was asked for.
func (r *QEMUReplay) SerialPath() string { return r.cfg.SerialPath }

// QMPSocket returns the path of QEMU's QMP socket. The replay keeps one
// connection open (QMP); QEMU serves one client at a time on a socket.
func (r *QEMUReplay) QMPSocket() string { return r.cfg.QMPSocket }

// QMP returns the replay's QMP connection.
func (r *QEMUReplay) QMP() *qmp.Client { return r.qmp }

// Output returns what QEMU printed on stdout and stderr so far.
func (r *QEMUReplay) Output() string { return r.out.String() }

// Done is closed when QEMU has exited.
func (r *QEMUReplay) Done() <-chan struct{} { return r.done }

// Wait waits for QEMU to exit and returns its exit error (nil for status 0).
func (r *QEMUReplay) Wait() error {
	<-r.done
	r.cleanup()
	return r.waitErr
}

// Stop asks QEMU to quit (SIGTERM), kills it after 5 s, and waits for it.
func (r *QEMUReplay) Stop() error {
	select {
	case <-r.done:
	default:
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	}
	r.cleanup()
	return nil
}

func (r *QEMUReplay) cleanup() {
	r.once.Do(func() {
		if r.qmp != nil {
			r.qmp.Close()
		}
		if r.tmpDir != "" {
			os.RemoveAll(r.tmpDir)
		}
	})
}

// QEMU starts a QEMU that continues checkpoint cfg.Interval of cfg.Run: its
// RAM is mapped from the mount (share=off, so the guest's writes stay in
// QEMU), its device state comes from <I>.dev through an incoming migration
// with x-ignore-shared, and then the guest is resumed. ctx bounds the
// start-up only; afterwards QEMU runs until it exits or Stop is called (or
// the calling process dies).
func QEMU(ctx context.Context, cfg QEMUConfig) (*QEMUReplay, error) {
	cfg, err := resolveQEMU(cfg)
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	r := &QEMUReplay{done: make(chan struct{})}
	if cfg.QMPSocket == "" {
		if r.tmpDir, err = os.MkdirTemp("", "ckptfs-replay-"); err != nil {
			return nil, fmt.Errorf("replay: %v", err)
		}
		cfg.QMPSocket = filepath.Join(r.tmpDir, "qmp.sock")
	}
	_ = os.Remove(cfg.QMPSocket)
	r.cfg = cfg
	args := qemuArgs(cfg)
	r.args = append([]string{cfg.QEMU}, args...)
	log.Info("replay qemu", "args", strings.Join(r.args, " "))

	cmd := exec.Command(cfg.QEMU, args...)
	var w io.Writer = &r.out
	if cfg.Stdout != nil {
		cmd.Stdout = io.MultiWriter(&r.out, cfg.Stdout)
	} else {
		cmd.Stdout = w
	}
	if cfg.Stderr != nil {
		cmd.Stderr = io.MultiWriter(&r.out, cfg.Stderr)
	} else {
		cmd.Stderr = w
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		r.cleanup()
		return nil, fmt.Errorf("replay: start %s: %w", cfg.QEMU, err)
	}
	r.cmd = cmd
	go func() {
		r.waitErr = cmd.Wait()
		close(r.done)
	}()
	ok := false
	defer func() {
		if !ok {
			_ = r.cmd.Process.Kill()
			<-r.done
			r.cleanup()
		}
	}()
	fail := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		select {
		case <-r.done:
			msg += fmt.Sprintf(" (qemu exited: %v)", r.waitErr)
		default:
		}
		if out := r.out.LastLines(5); out != "" {
			msg += ": " + out
		}
		return fmt.Errorf("replay: %s", msg)
	}

	// QEMU creates the socket early, before the memory backend, so a
	// connect may succeed on a QEMU that is about to fail: every later
	// error is reported with QEMU's own words.
	if r.qmp, err = qmp.DialStarting(ctx, cfg.QMPSocket, r.done); err != nil {
		return nil, fail("QMP on %s: %v", cfg.QMPSocket, err)
	}
	r.Started = time.Since(t0)
	st, err := r.qmp.QueryStatus(ctx)
	if err != nil {
		return nil, fail("%v", err)
	}
	if st.Status != "inmigrate" {
		return nil, fail("QEMU is %q before migrate-incoming, want inmigrate", st.Status)
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if err := r.qmp.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		return nil, fail("%v", err)
	}
	dev := filepath.Join(cfg.Mount, cfg.Run, strconv.Itoa(cfg.Interval)+".dev")
	uri := "exec:cat " + shellQuote(dev)
	if !cfg.DevViaExec {
		f, err := os.Open(dev)
		if err != nil {
			return nil, fail("%v", err)
		}
		err = r.qmp.SendFD(ctx, "ckptfs-dev", int(f.Fd()))
		f.Close()
		if err != nil {
			return nil, fail("%v", err)
		}
		uri = "fd:ckptfs-dev"
	}
	tm := time.Now()
	if err := r.qmp.Execute(ctx, "migrate-incoming", map[string]string{"uri": uri}, nil); err != nil {
		return nil, fail("%v", err)
	}
	if err := waitIncoming(ctx, r.qmp); err != nil {
		return nil, fail("incoming migration from %s: %v", dev, err)
	}
	r.Migration = time.Since(tm)
	if !cfg.Paused {
		if err := r.qmp.Execute(ctx, "cont", nil, nil); err != nil {
			return nil, fail("%v", err)
		}
		if st, err := r.qmp.QueryStatus(ctx); err != nil || !st.Running {
			return nil, fail("guest not running after cont (%q, %v)", st.Status, err)
		}
	}
	r.Ready = time.Since(t0)
	log.Info("replay qemu ready", "pid", r.Pid(), "migration", r.Migration, "ready", r.Ready)
	ok = true
	return r, nil
}

// waitIncoming polls query-migrate until the incoming migration completed.
func waitIncoming(ctx context.Context, c *qmp.Client) error {
	for {
		var mi struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.Execute(ctx, "query-migrate", nil, &mi); err != nil {
			return err
		}
		switch mi.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s %s", mi.Status, mi.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("migration still %q: %w", mi.Status, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// resolveQEMU checks cfg against the mount and fills what it leaves to the
// run: RAMSize, RecordedArgs (from run.json), the QEMU binary's path and the
// accelerator. Errors: ErrRunNotFound, ErrNoCheckpoint, ErrNoWorkingSet
// (Sparse on an interval without <I>.ram), ErrNoDeviceState, ErrNoQEMU,
// ErrRAMSizeMismatch, ErrBadConfig.
func resolveQEMU(cfg QEMUConfig) (QEMUConfig, error) {
	rd, err := openRun(cfg.Mount, cfg.Run)
	if err != nil {
		return cfg, err
	}
	if cfg.Interval < 0 {
		return cfg, fmt.Errorf("%w: interval %d", ErrBadConfig, cfg.Interval)
	}
	i := cfg.Interval
	ram := rd.fullPath(i)
	if cfg.Sparse {
		ram = rd.ramPath(i)
	}
	if _, err := os.Stat(rd.fullPath(i)); err != nil {
		return cfg, fmt.Errorf("%w: run %s has no checkpoint %d (%s missing)", ErrNoCheckpoint, cfg.Run, i, rd.fullPath(i))
	}
	if cfg.Sparse {
		if _, err := os.Stat(ram); err != nil {
			return cfg, fmt.Errorf("%w: interval %d of run %s has no working set (yet), so there is no sparse checkpoint %s; replay the full checkpoint (without --sparse)",
				ErrNoWorkingSet, i, cfg.Run, ram)
		}
	}
	if err := rd.checkRAMFile(ram); err != nil {
		return cfg, fmt.Errorf("replay: %w", err)
	}
	if _, err := os.Stat(rd.devPath(i)); err != nil {
		return cfg, fmt.Errorf("%w: checkpoint %d of run %s has no device state (%s missing); record with --device-state to replay it in QEMU",
			ErrNoDeviceState, i, cfg.Run, rd.devPath(i))
	}
	if cfg.RAMSize == 0 {
		cfg.RAMSize = rd.info.RAMSize
	} else if cfg.RAMSize != rd.info.RAMSize {
		return cfg, fmt.Errorf("%w: RAMSize %d, run %s has %d", ErrRAMSizeMismatch, cfg.RAMSize, cfg.Run, rd.info.RAMSize)
	}
	if cfg.RecordedArgs == nil {
		if cfg.RecordedArgs, err = parseArgList(rd.info.Meta[MetaQEMUArgs]); err != nil {
			return cfg, fmt.Errorf("replay: run.json meta %q: %v", MetaQEMUArgs, err)
		}
	}
	for _, a := range [][]string{cfg.RecordedArgs, cfg.Args} {
		if v, ok := optionValue(a, "m"); ok {
			n, err := qemuargs.MemSize(v)
			if err != nil {
				return cfg, fmt.Errorf("%w: -m %s: %v", ErrBadConfig, v, err)
			}
			if n != cfg.RAMSize {
				return cfg, fmt.Errorf("%w: -m %s is %d bytes, the recording's RAM is %d bytes (%s)",
					ErrRAMSizeMismatch, v, n, cfg.RAMSize, fmtBytes(cfg.RAMSize))
			}
		}
	}
	switch cfg.Accel {
	case "", "tcg":
	case "kvm":
		if _, err := os.Stat("/dev/kvm"); err != nil {
			return cfg, fmt.Errorf("%w: accel kvm: /dev/kvm: %v", ErrBadConfig, err)
		}
	default:
		return cfg, fmt.Errorf("%w: accel %q (want tcg or kvm)", ErrBadConfig, cfg.Accel)
	}
	if cfg.Accel != "" && userAccel(cfg.Args) {
		return cfg, fmt.Errorf("%w: accel %s and an accelerator in the QEMU arguments", ErrBadConfig, cfg.Accel)
	}
	bin := cfg.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return cfg, fmt.Errorf("%w: %s: %v (install qemu-system-x86, or give its path)", ErrNoQEMU, bin, err)
	}
	cfg.QEMU = path
	return cfg, nil
}
