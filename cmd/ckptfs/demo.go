package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	ckfs "github.com/ckptfs/ckptfs/fs"
	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/kvmrec"
	"github.com/ckptfs/ckptfs/replay"
	"github.com/urfave/cli/v2"
)

func demoCommand() *cli.Command {
	return &cli.Command{
		Name:  "demo",
		Usage: "the main job on built-in defaults: record a guest, mount it, measure replays",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "dir", Value: "ckptfs-demo", Usage: "working directory (store, mount, guest files)"},
			&cli.BoolFlag{Name: "qemu", Usage: "record a QEMU guest (default when QEMU and a guest kernel are there)"},
			&cli.BoolFlag{Name: "synthetic", Usage: "record the synthetic guest"},
			&cli.BoolFlag{Name: "exact-ws", Usage: "record exact working sets (record --exact-ws)"},
			&cli.StringFlag{Name: "kernel", Usage: "guest kernel (default $CKPTFS_GUEST_DIR/vmlinuz)"},
			&cli.StringFlag{Name: "initrd", Usage: "guest initramfs (default $CKPTFS_GUEST_DIR/initramfs.gz)"},
			&cli.IntFlag{Name: "count", Value: 6, Usage: "checkpoints to record"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "how long the guest runs between checkpoints"},
			&cli.IntFlag{Name: "ram-mib", Value: 256, Usage: "guest RAM in MiB"},
			&cli.IntSliceFlag{Name: "concurrency", Value: cli.NewIntSlice(1, 4), Usage: "`LIST` of replays at once in the bench, comma-separated or repeated"},
			&cli.BoolFlag{Name: "no-wait", Usage: "clean up and exit instead of staying mounted"},
			&cli.BoolFlag{Name: "no-deterministic", Usage: "skip the deterministic recording and its interval replays (QEMU guest only)"},
			&cli.IntFlag{Name: "jobs", Value: 2, Usage: "interval replays at once (replay run --jobs)"},
			&cli.DurationFlag{Name: "replay-deadline", Value: time.Minute, Usage: "kill an interval replay that has not reached the next checkpoint after this long"},
			noPackFlag,
		},
		Action: runDemo,
	}
}

type demoGuest struct {
	kind    string // "qemu" or "synthetic"
	cmd     *exec.Cmd
	qmp     string
	mem     string
	memDir  string // a private directory on tmpfs for mem, removed by stop
	serial  string
	qemuArg []string
	// machineArgs are qemuArg without the RAM backend, the QMP socket and
	// the serial file: what record --deterministic takes after --.
	machineArgs []string
}

func (g *demoGuest) stop() {
	if g.cmd != nil && g.cmd.Process != nil {
		_ = g.cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { g.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			g.cmd.Process.Kill()
			<-done
		}
	}
	if g.memDir != "" {
		os.RemoveAll(g.memDir)
	}
}

// demoRunPrefix starts the name of every run the demo records.
const demoRunPrefix = "demo-"

func runDemo(c *cli.Context) error {
	// Checked before anything starts: a bad flag should not cost a recording.
	if err := replay.CheckConcurrency(c.IntSlice("concurrency")); err != nil {
		return usageErrorf("demo: --concurrency: %v", err)
	}
	if c.Int("jobs") < 1 || c.Duration("replay-deadline") <= 0 {
		return usageErrorf("demo: --jobs and --replay-deadline must be positive")
	}
	dir := absPath(c, c.String("dir"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	out := c.App.Writer
	say := func(format string, args ...any) { fmt.Fprintf(out, "demo: "+format+"\n", args...) }
	g, err := startDemoGuest(c, dir)
	if err != nil {
		return err
	}
	defer g.stop()
	say("started the %s guest (%d MiB RAM, QMP %s)", g.kind, c.Int("ram-mib"), g.qmp)

	st, err := index.Open(filepath.Join(dir, "store"), index.Options{Create: true, Logger: slog.Default()})
	if err != nil {
		return err
	}
	defer st.Close()
	// The demo's store keeps only the latest demo run: each one takes
	// hundreds of MiB, and a demo measures only the run it records.
	runs, err := st.Runs()
	if err != nil {
		return err
	}
	for _, r := range runs {
		if strings.HasPrefix(r.Name, demoRunPrefix) {
			if err := st.DeleteRun(r.Name); err != nil {
				return fmt.Errorf("removing the earlier demo run %s: %w", r.Name, err)
			}
			say("removed the earlier demo run %s from %s", r.Name, st.Dir())
		}
	}
	reg := newRegistry()
	mnt := filepath.Join(dir, "mnt")
	mntNP := filepath.Join(dir, "mnt-noprefetch")
	for _, m := range []string{mnt, mntNP} {
		os.MkdirAll(m, 0o700)
	}
	ckfs.TuneGC(st.CacheCapacity())
	srv, err := mountAt(c, st, mnt, "ws", reg)
	if err != nil {
		return err
	}
	defer srv.Unmount()
	srvNP, err := mountAt(c, st, mntNP, "none", nil)
	if err != nil {
		return err
	}
	defer srvNP.Unmount()
	sock, err := serveStore(st, &ownedStore{st: st, what: "ckptfs demo (pid " + strconv.Itoa(os.Getpid()) + ")", mountPoint: mnt})
	if err != nil {
		return err
	}
	defer sock.Close()
	say("store %s mounted at %s (and at %s without prefetch)", st.Dir(), mnt, mntNP)

	run := demoRunPrefix + time.Now().Format("20060102-150405")
	cfg := kvmrec.Config{Run: run, QMPSocket: g.qmp, MemPath: g.mem, Interval: c.Duration("interval"),
		Count: c.Int("count"), DeviceState: g.kind == "qemu", Logger: slog.Default(), Registerer: reg,
		ExactWorkingSets: c.Bool("exact-ws"),
		OnCheckpoint:     func(s kvmrec.CheckpointStats) { say("%s", formatCheckpoint(s)) }}
	if g.kind == "qemu" {
		args, _ := json.Marshal(g.qemuArg) // a []string always marshals
		cfg.Meta = map[string]string{"qemu_args": string(args)}
	}
	say("1. non-deterministic recording (record --qmp --mem, the path for a QEMU or KVM guest you start yourself)")
	say("recording %d checkpoints of run %s every %s", cfg.Count, run, cfg.Interval)
	sum, err := kvmrec.Record(c.Context, st, cfg)
	if err != nil {
		return err
	}
	say("recorded %d checkpoints; downtime median %s, p99 %s; %s stored",
		sum.Checkpoints, sum.MedianDowntime.Round(10*time.Microsecond), sum.P99Downtime.Round(10*time.Microsecond), humanBytes(sum.BytesStored))
	if g.kind == "synthetic" {
		g.stop() // the bench wants the machine to itself; a QEMU guest stays up for comparison
	}
	if err := packRun(c, localStore{st}, run); err != nil {
		return err
	}

	say("measuring replays: full eager (a), sparse eager (b), lazy with prefetch (c), lazy without (d)")
	// The bench runs as a process of its own, as a user would run it:
	// inside the mount's process its goroutines and mode (d)'s READs took
	// the cores the prefetch needs. It empties the store's cache through
	// the store socket.
	bench := exec.CommandContext(c.Context, selfPath(), "--log-level", c.String("log-level"), "replay", "bench",
		"--mount", mnt, "--no-prefetch-mount", mntNP, "--run", run, "--concurrency", joinInts(c.IntSlice("concurrency")),
		"--json", filepath.Join(dir, "bench.json"), "--plot", filepath.Join(dir, "bench.png"))
	bench.Stdout, bench.Stderr = out, c.App.ErrWriter
	bench.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := bench.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() > 0 {
			// The bench said why on stderr; one line is enough.
			return &exitError{code: ee.ExitCode(), err: errAlreadyReported}
		}
		return fmt.Errorf("replay bench: %w", err)
	}
	var det *demoReplays
	if g.kind == "qemu" && !c.Bool("no-deterministic") {
		g.stop() // the deterministic recording starts a QEMU of its own
		if det, err = demoDeterministic(c, st, g, run+"-det", mnt, dir, say); err != nil {
			return err
		}
	} else if g.kind == "synthetic" {
		say("2. no deterministic recording: the synthetic guest is no QEMU (record --deterministic needs QEMU TCG)")
	}
	last := sum.Checkpoints - 2
	fmt.Fprintf(out, `
Try, in another terminal:
  ls -ls %[1]s/%[2]s                       # sparse sizes: only working sets are data
  cat %[1]s/%[2]s/%[3]d.json
  cmp %[1]s/%[2]s/full/%[3]d.ram <(%[4]s --store %[5]s export --run %[2]s --interval %[3]d /dev/stdout)
  %[4]s --store %[5]s ls %[2]s
`, mnt, run, max(last, 0), selfPath(), st.Dir())
	if g.kind == "qemu" {
		fmt.Fprintf(out, "  %s replay qemu --mount %s --run %s --interval %d --serial %s/replay.serial\n", selfPath(), mnt, run, max(last, 0), dir)
	}
	if det != nil {
		fmt.Fprintf(out, "  %s replay interval --mount %s --run %s --interval 1 --precision\n", selfPath(), mnt, det.run)
	}
	fmt.Fprintf(out, "Report: %s/bench.json, plot: %s/bench.png\n", dir, dir)
	if det != nil {
		fmt.Fprintf(out, "Interval replays: %s\n", det.json)
		say("%s", det.verdict())
	}
	if !c.Bool("no-wait") {
		fmt.Fprintln(out, "Mounted until Ctrl-C.")
		<-c.Context.Done()
	}
	return det.err()
}

func selfPath() string {
	p, err := os.Executable()
	if err != nil {
		return "ckptfs"
	}
	return p
}

// startDemoGuest starts a QEMU guest when one can run here, else the
// synthetic guest, and waits until its QMP socket answers.
func startDemoGuest(c *cli.Context, dir string) (*demoGuest, error) {
	gdir := filepath.Join(dir, "guest")
	os.RemoveAll(gdir)
	if err := os.MkdirAll(gdir, 0o700); err != nil {
		return nil, err
	}
	g := &demoGuest{qmp: filepath.Join(gdir, "qmp.sock"), mem: filepath.Join(gdir, "ram"), serial: filepath.Join(gdir, "serial.log")}
	// Guest RAM belongs on tmpfs, as in a real set-up: on a disk file
	// system the pagemap tracker's page-out writes frames to disk and the
	// page cache's large folios blur the working sets.
	if md, err := os.MkdirTemp("/dev/shm", "ckptfs-demo-"); err == nil {
		g.memDir, g.mem = md, filepath.Join(md, "ram")
	}
	ram := c.Int("ram-mib")
	guestDir := os.Getenv("CKPTFS_GUEST_DIR")
	if guestDir == "" {
		guestDir = "/var/cache/ckptfs-guest"
	}
	kernel, initrd := c.String("kernel"), c.String("initrd")
	if kernel == "" {
		kernel = filepath.Join(guestDir, "vmlinuz")
	}
	if initrd == "" {
		initrd = filepath.Join(guestDir, "initramfs.gz")
	}
	qemu, qerr := exec.LookPath("qemu-system-x86_64")
	_, kerr := os.Stat(kernel)
	_, ierr := os.Stat(initrd)
	useQEMU := c.Bool("qemu") || (!c.Bool("synthetic") && qerr == nil && kerr == nil && ierr == nil)
	if useQEMU {
		switch {
		case qerr != nil:
			return nil, fmt.Errorf("--qemu: %v (apt-get install qemu-system-x86)", qerr)
		case kerr != nil || ierr != nil:
			return nil, fmt.Errorf("--qemu: no guest kernel/initramfs at %s, %s (make guest builds them)", kernel, initrd)
		}
		g.kind = "qemu"
		g.machineArgs = []string{
			"-machine", "pc,accel=tcg", "-m", fmt.Sprintf("%dM", ram),
			"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
			"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 mitigations=off",
		}
		g.qemuArg = append(append([]string(nil), g.machineArgs...),
			"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%dM,mem-path=%s,share=on", ram, g.mem),
			"-machine", "memory-backend=ram0",
			"-serial", "file:"+g.serial, "-qmp", "unix:"+g.qmp+",server=on,wait=off")
		g.cmd = exec.Command(qemu, g.qemuArg...)
	} else {
		g.kind = "synthetic"
		g.cmd = exec.Command(selfPath(), "synth-guest", "-mem", g.mem, "-ram-size", fmt.Sprintf("%dM", ram),
			"-qmp", g.qmp, "-ws", "0.2", "-dirty", "0.05", "-locality", "1", "-tick", "5ms", "-tick-frames", "512")
	}
	g.cmd.Stdout, g.cmd.Stderr = io.Discard, os.Stderr
	if err := g.cmd.Start(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(c.Context, 30*time.Second)
	defer cancel()
	for {
		if conn, err := net.Dial("unix", g.qmp); err == nil {
			conn.Close()
			break
		}
		select {
		case <-ctx.Done():
			g.stop()
			return nil, fmt.Errorf("the %s guest did not open its QMP socket in time", g.kind)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if g.kind == "qemu" {
		// Let the kernel boot and the workload start before the first checkpoint.
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if data, _ := os.ReadFile(g.serial); strings.Contains(string(data), "ckptfs-tick 3") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return g, nil
}

// joinInts writes a list as an int slice flag takes it: "1,4".
func joinInts(is []int) string {
	parts := make([]string, len(is))
	for k, i := range is {
		parts[k] = strconv.Itoa(i)
	}
	return strings.Join(parts, ",")
}
