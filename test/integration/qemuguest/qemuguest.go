package qemuguest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// DefaultCacheDir is where Build puts the guest when CKPTFS_GUEST_DIR is unset
// and Build is called with an empty dir.
const DefaultCacheDir = "/var/cache/ckptfs-guest"

// DefaultMemMiB is the guest RAM size used when Config.MemMiB is 0.
const DefaultMemMiB = 256

// DefaultAppend is the kernel command line of the test guest.
const DefaultAppend = "console=ttyS0 panic=-1 mitigations=off"

// Artifacts are the files of a built guest.
type Artifacts struct {
	Dir       string // the cache dir
	Kernel    string // Dir/vmlinuz
	Initrd    string // Dir/initramfs.gz
	QEMU      string // absolute path of qemu-system-x86_64
	ScriptDir string // test/integration/guest
}

// ScriptDir returns the directory of build-guest.sh, located relative to this
// source file.
func ScriptDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("qemuguest: cannot locate own source file")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "guest")
	if _, err := os.Stat(filepath.Join(dir, "build-guest.sh")); err != nil {
		return "", fmt.Errorf("qemuguest: build-guest.sh not found: %w", err)
	}
	return filepath.Clean(dir), nil
}

// CacheDir returns the directory Build uses for dir == "": $CKPTFS_GUEST_DIR,
// else DefaultCacheDir.
func CacheDir() string {
	if d := os.Getenv("CKPTFS_GUEST_DIR"); d != "" {
		return d
	}
	return DefaultCacheDir
}

var buildMu sync.Mutex

// Build runs test/integration/guest/build-guest.sh dir (dir "" means
// CacheDir()) and returns the kernel and initramfs. It is fast when the guest
// is already built (a stamp file). It installs missing Debian packages, so
// building the guest the first time needs root and the apt archive.
func Build(dir string) (Artifacts, error) {
	if dir == "" {
		dir = CacheDir()
	}
	sd, err := ScriptDir()
	if err != nil {
		return Artifacts{}, err
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	cmd := exec.Command("bash", filepath.Join(sd, "build-guest.sh"), dir)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return Artifacts{}, fmt.Errorf("qemuguest: build-guest.sh %s: %v\n%s", dir, err, out.String())
	}
	a := Artifacts{
		Dir:       dir,
		Kernel:    filepath.Join(dir, "vmlinuz"),
		Initrd:    filepath.Join(dir, "initramfs.gz"),
		ScriptDir: sd,
	}
	if q, err := exec.LookPath("qemu-system-x86_64"); err == nil {
		a.QEMU = q
	}
	return a, nil
}

// Config describes one QEMU process running the test guest.
type Config struct {
	QEMU       string // binary; "" means qemu-system-x86_64 from $PATH
	Kernel     string // -kernel
	Initrd     string // -initrd
	MemMiB     int    // guest RAM; 0 means DefaultMemMiB
	MemPath    string // memory-backend-file mem-path (required)
	Share      bool   // share=on (recording) or share=off (restore from a checkpoint file)
	QMPSocket  string // -qmp unix:QMPSocket,server=on,wait=off (required)
	SerialPath string // -serial file:SerialPath; "" means -serial none
	Incoming   bool   // adds -incoming defer
	ExtraArgs  []string

	// Optional additions beyond the common ones.
	Append    string    // kernel command line; "" means DefaultAppend
	ReadOnly  bool      // memory-backend-file readonly=on
	Stderr    io.Writer // also receives QEMU's stdout/stderr; may be nil
	Cred      *syscall.Credential
	StartWait time.Duration // how long Start waits for the QMP socket; 0 means 30s
}

// ArgsFor returns the QEMU arguments (without the binary) for cfg. Restoring
// a checkpoint needs the same arguments as the recording except mem-path,
// share, the serial file, the QMP socket and -incoming: see doc.go.
func ArgsFor(cfg Config) []string {
	mem := cfg.MemMiB
	if mem <= 0 {
		mem = DefaultMemMiB
	}
	share := "off"
	if cfg.Share {
		share = "on"
	}
	backend := fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=%s,share=%s",
		mem, cfg.MemPath, share)
	if cfg.ReadOnly {
		backend += ",readonly=on"
	}
	app := cfg.Append
	if app == "" {
		app = DefaultAppend
	}
	args := []string{
		"-machine", "pc,accel=tcg",
		"-m", fmt.Sprintf("%dM", mem),
		"-object", backend,
		"-machine", "memory-backend=ram0",
		"-nodefaults", "-no-user-config",
		"-display", "none",
		"-no-reboot",
	}
	if cfg.Kernel != "" {
		args = append(args, "-kernel", cfg.Kernel)
	}
	if cfg.Initrd != "" {
		args = append(args, "-initrd", cfg.Initrd)
	}
	if cfg.Kernel != "" {
		args = append(args, "-append", app)
	}
	if cfg.SerialPath != "" {
		args = append(args, "-serial", "file:"+cfg.SerialPath)
	} else {
		args = append(args, "-serial", "none")
	}
	if cfg.QMPSocket != "" {
		args = append(args, "-qmp", "unix:"+cfg.QMPSocket+",server=on,wait=off")
	}
	if cfg.Incoming {
		args = append(args, "-incoming", "defer")
	}
	return append(args, cfg.ExtraArgs...)
}

// Guest is a running QEMU process.
type Guest struct {
	Cfg  Config
	Cmd  *exec.Cmd
	Args []string // full command line, binary first

	out     tailbuf.Buffer
	done    chan struct{}
	waitErr error
}

// Start starts QEMU for cfg and waits until its QMP socket accepts a
// connection (or QEMU exits, which is an error carrying QEMU's stderr). The
// process is killed when ctx is done, and (Pdeathsig) when the calling
// process dies.
func Start(ctx context.Context, cfg Config) (*Guest, error) {
	if cfg.MemPath == "" {
		return nil, errors.New("qemuguest: Config.MemPath is required")
	}
	if cfg.QMPSocket == "" {
		return nil, errors.New("qemuguest: Config.QMPSocket is required")
	}
	bin := cfg.QEMU
	if bin == "" {
		bin = "qemu-system-x86_64"
	}
	args := ArgsFor(cfg)
	g := &Guest{Cfg: cfg, Args: append([]string{bin}, args...), done: make(chan struct{})}
	_ = os.Remove(cfg.QMPSocket)
	cmd := exec.CommandContext(ctx, bin, args...)
	var w io.Writer = &g.out
	if cfg.Stderr != nil {
		w = io.MultiWriter(&g.out, cfg.Stderr)
	}
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cfg.Cred}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("qemuguest: start %s: %w", bin, err)
	}
	g.Cmd = cmd
	go func() {
		g.waitErr = cmd.Wait()
		close(g.done)
	}()
	wait := cfg.StartWait
	if wait <= 0 {
		wait = 30 * time.Second
	}
	deadline := time.Now().Add(wait)
	for {
		// QEMU creates the QMP socket before it creates the memory backend
		// and loads the kernel, and the kernel accepts connections into the
		// listen backlog from then on, so a successful connect proves
		// nothing. QEMU sends the greeting only from its main loop, once
		// everything is set up.
		if greeted(cfg.QMPSocket, time.Until(deadline)) {
			select {
			case <-g.done:
			default:
				return g, nil
			}
		}
		select {
		case <-g.done:
			return nil, fmt.Errorf("qemuguest: qemu exited before QMP was up (%v): %s", g.waitErr, g.Output())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			g.Kill()
			return nil, fmt.Errorf("qemuguest: QMP socket %s not up after %v: %s", cfg.QMPSocket, wait, g.Output())
		}
	}
}

// greeted connects to a QMP socket and reports whether QEMU sent its greeting
// within d; it then disconnects (QEMU serves the next client).
func greeted(sock string, d time.Duration) bool {
	if d < 100*time.Millisecond {
		d = 100 * time.Millisecond
	}
	c, err := net.DialTimeout("unix", sock, d)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(d))
	var buf []byte
	b := make([]byte, 512)
	for len(buf) < 64*1024 {
		n, err := c.Read(b)
		buf = append(buf, b[:n]...)
		if bytes.Contains(buf, []byte(`"QMP"`)) {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// Pid returns QEMU's process id.
func (g *Guest) Pid() int { return g.Cmd.Process.Pid }

// Output returns what QEMU printed on stdout and stderr so far.
func (g *Guest) Output() string { return g.out.String() }

// Done is closed when QEMU has exited.
func (g *Guest) Done() <-chan struct{} { return g.done }

// Exited reports whether QEMU has exited.
func (g *Guest) Exited() bool {
	select {
	case <-g.done:
		return true
	default:
		return false
	}
}

// Wait waits for QEMU to exit and returns its exit error (nil for status 0).
// It may be called any number of times, from any goroutine.
func (g *Guest) Wait() error {
	<-g.done
	return g.waitErr
}

// Stop asks QEMU to terminate (SIGTERM, which QEMU handles like a QMP quit),
// and kills it if it has not exited after 5 s. It returns once QEMU is gone.
func (g *Guest) Stop() error {
	if g.Exited() {
		return nil
	}
	_ = g.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.done:
		return nil
	case <-time.After(5 * time.Second):
	}
	return g.Kill()
}

// Kill kills QEMU (SIGKILL) and waits for it.
func (g *Guest) Kill() error {
	if g.Exited() {
		return nil
	}
	_ = g.Cmd.Process.Kill()
	<-g.done
	return nil
}

var tickRE = regexp.MustCompile(`ckptfs-tick ([0-9]+)`)

// Ticks returns the counter values of all "ckptfs-tick N" lines in a serial
// log, in order. Only complete lines count: a line still being written (no
// newline yet, e.g. when the guest was stopped in the middle of it) is
// ignored, so a truncated "ckptfs-tick 1" of "ckptfs-tick 12" is never read.
// Kernel messages may share a line with a tick; only the pattern counts. A
// missing file is an error; an empty one gives no ticks.
func Ticks(serialPath string) ([]int, error) {
	data, err := os.ReadFile(serialPath)
	if err != nil {
		return nil, err
	}
	if i := bytes.LastIndexByte(data, '\n'); i >= 0 {
		data = data[:i+1]
	} else {
		data = nil
	}
	var ticks []int
	for _, line := range bytes.Split(data, []byte{'\n'}) {
		for _, m := range tickRE.FindAllSubmatch(line, -1) {
			n, err := strconv.Atoi(string(m[1]))
			if err != nil {
				continue
			}
			ticks = append(ticks, n)
		}
	}
	return ticks, nil
}

// LastTick returns the last tick of a serial log, or 0 when it has none.
func LastTick(serialPath string) (int, error) {
	t, err := Ticks(serialPath)
	if err != nil || len(t) == 0 {
		return 0, err
	}
	return t[len(t)-1], nil
}

// WaitTicks polls the serial log until it shows a tick >= min, or ctx ends.
// It returns the last tick seen.
func WaitTicks(ctx context.Context, serialPath string, min int) (int, error) {
	for {
		last, _ := LastTick(serialPath)
		if last >= min {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return last, fmt.Errorf("qemuguest: %s: tick %d not reached (last %d): %w", serialPath, min, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// CopySparse copies a file, leaving all-zero 64 KiB blocks as holes (tests
// use it to take a RAM image while the guest is stopped).
func CopySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_ = os.Remove(dst)
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	zero := make([]byte, len(buf))
	var off int64
	for {
		n, err := io.ReadFull(in, buf)
		if n > 0 {
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, werr := out.WriteAt(buf[:n], off); werr != nil {
					out.Close()
					return werr
				}
			}
			off += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			out.Close()
			return err
		}
	}
	if err := out.Truncate(off); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
