package replay

import (
	"bytes"
	"context"
	"encoding/json"
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
)

// MetaQEMUArgs is the run.json meta key that holds the QEMU arguments of the
// recording: a JSON array of strings, or arguments separated by white space.
const MetaQEMUArgs = "qemu_args"

// DefaultBackendID is the memory backend id (and RAM block name) used when
// the arguments name none; it is what the recorder's QEMU guests use.
const DefaultBackendID = "ram0"

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

	// RAMSize of the guest; 0 means run.json's ram_size. QEMUArgs needs it.
	RAMSize uint64
	// BackendID of the memory backend; "" means the memory-backend= of a
	// -machine argument, else DefaultBackendID. It must be the recording's.
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
	out     lockedBuffer
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
	cfg, err := ResolveQEMU(cfg)
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
	args := QEMUArgs(cfg)
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
		if out := strings.TrimSpace(r.out.String()); out != "" {
			msg += ": " + lastLines(out, 5)
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

// ResolveQEMU checks cfg against the mount and fills what it leaves to the
// run: RAMSize, RecordedArgs (from run.json), the QEMU binary's path and the
// accelerator. Errors: ErrRunNotFound, ErrNoCheckpoint, ErrNoWorkingSet
// (Sparse on an interval without <I>.ram), ErrNoDeviceState, ErrNoQEMU,
// ErrRAMSizeMismatch, ErrBadConfig.
func ResolveQEMU(cfg QEMUConfig) (QEMUConfig, error) {
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

// QEMUArgs returns QEMU's arguments (without the binary) for cfg, which must
// have RAMSize set (ResolveQEMU does it). It reads nothing. The order:
// the recorded arguments (filtered), then the replay's own
//
//	-accel tcg -m SIZE
//	-object memory-backend-file,id=ID,size=BYTES,mem-path=MNT/RUN/full/I.ram,share=off
//	-machine memory-backend=ID -qmp unix:SOCK,server=on,wait=off
//	-serial file:SERIAL -display none -S -incoming defer
//
// (each only where the arguments do not already say it), then cfg.Args.
func QEMUArgs(cfg QEMUConfig) []string {
	all := append(append([]string(nil), cfg.RecordedArgs...), cfg.Args...)
	id := cfg.BackendID
	if id == "" {
		id = backendFromArgs(all)
	}
	if id == "" {
		id = DefaultBackendID
	}
	rec, hadSerial := filterRecorded(cfg.RecordedArgs, id, cfg.SerialPath)

	mem := filepath.Join(cfg.Mount, cfg.Run, "full", strconv.Itoa(cfg.Interval)+".ram")
	if cfg.Sparse {
		mem = filepath.Join(cfg.Mount, cfg.Run, strconv.Itoa(cfg.Interval)+".ram")
	}
	out := rec
	if !userAccel(cfg.Args) {
		accel := cfg.Accel
		if accel == "" {
			accel = "tcg"
		}
		out = append(out, "-accel", accel)
	}
	if _, ok := optionValue(cfg.Args, "m"); !ok {
		out = append(out, "-m", memArg(cfg.RAMSize))
	}
	out = append(out, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%d,mem-path=%s,share=off",
		id, cfg.RAMSize, mem))
	if backendFromArgs(all) == "" {
		out = append(out, "-machine", "memory-backend="+id)
	}
	if cfg.QMPSocket != "" {
		out = append(out, "-qmp", "unix:"+cfg.QMPSocket+",server=on,wait=off")
	}
	if cfg.SerialPath != "" && !hadSerial {
		if _, user := optionValue(cfg.Args, "serial"); !user {
			out = append(out, "-serial", "file:"+cfg.SerialPath)
		}
	}
	if !hasOption(all, "display") && !hasOption(all, "nographic") {
		out = append(out, "-display", "none")
	}
	out = append(out, "-S", "-incoming", "defer")
	return append(out, cfg.Args...)
}

// optName returns the option name of an argument ("-m" and "--m" give "m"),
// or "" when it is not an option.
func optName(a string) string {
	if !strings.HasPrefix(a, "-") || a == "-" {
		return ""
	}
	return strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
}

// optionValue returns the value of the last option name in args.
func optionValue(args []string, name string) (string, bool) {
	v, ok := "", false
	for i := 0; i+1 < len(args); i++ {
		if optName(args[i]) == name {
			v, ok = args[i+1], true
			i++
		}
	}
	return v, ok
}

func hasOption(args []string, name string) bool {
	for _, a := range args {
		if optName(a) == name {
			return true
		}
	}
	return false
}

// userAccel reports whether args choose an accelerator.
func userAccel(args []string) bool {
	for i, a := range args {
		switch optName(a) {
		case "accel", "enable-kvm":
			return true
		case "machine", "M":
			if i+1 < len(args) && optionParam(args[i+1], "accel") != "" {
				return true
			}
		}
	}
	return false
}

// optionParam returns key's value in a QEMU option string "a,key=v,b=w".
func optionParam(s, key string) string {
	for _, p := range strings.Split(s, ",") {
		if v, ok := strings.CutPrefix(p, key+"="); ok {
			return v
		}
	}
	return ""
}

func backendFromArgs(args []string) string {
	id := ""
	for i := 0; i+1 < len(args); i++ {
		if n := optName(args[i]); n == "machine" || n == "M" {
			if v := optionParam(args[i+1], "memory-backend"); v != "" {
				id = v
			}
		}
	}
	return id
}

// filterRecorded drops from the recording's arguments what belongs to the
// recording process: its RAM backend (the one with id), -m, -mem-path, the
// accelerator, QMP and monitors, -incoming, -S, -daemonize, -pidfile,
// -loadvm. Serial outputs become "null", except the first, which becomes
// serialPath when set; hadSerial reports whether there was one.
func filterRecorded(args []string, id, serialPath string) (out []string, hadSerial bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := ""
		if i+1 < len(args) {
			val = args[i+1]
		}
		switch optName(a) {
		case "qmp", "qmp-pretty", "monitor", "incoming", "pidfile", "loadvm", "mem-path", "m", "accel":
			i++
			continue
		case "S", "daemonize", "mem-prealloc", "enable-kvm":
			continue
		case "object":
			if strings.HasPrefix(val, "memory-backend-") && optionParam(val, "id") == id {
				i++
				continue
			}
		case "machine", "M":
			var keep []string
			for _, p := range strings.Split(val, ",") {
				if !strings.HasPrefix(p, "accel=") {
					keep = append(keep, p)
				}
			}
			i++
			if len(keep) > 0 && strings.Join(keep, "") != "" {
				out = append(out, a, strings.Join(keep, ","))
			}
			continue
		case "serial":
			i++
			s := "null"
			if !hadSerial && serialPath != "" {
				s = "file:" + serialPath
			}
			hadSerial = true
			out = append(out, a, s)
			continue
		}
		out = append(out, a)
	}
	return out, hadSerial
}

// memArg formats a RAM size for -m.
func memArg(n uint64) string {
	if n%(1<<20) == 0 {
		return strconv.FormatUint(n>>20, 10) + "M"
	}
	return strconv.FormatUint(n, 10) + "B"
}

// parseArgList parses the meta value of MetaQEMUArgs: a JSON array of
// strings, or arguments separated by white space ("" gives none).
func parseArgList(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return []string{}, nil
	}
	if strings.HasPrefix(s, "[") {
		var out []string
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			return nil, err
		}
		return out, nil
	}
	return strings.Fields(s), nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func lastLines(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
