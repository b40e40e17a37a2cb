package kvmrec

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

// The test binary doubles as the synthetic guest and as a recorder process
// that the kill test SIGKILLs: the role comes from the environment.
const roleEnv = "CKPTFS_KVMREC_TEST_ROLE"

func TestMain(m *testing.M) {
	switch os.Getenv(roleEnv) {
	case "guest":
		os.Exit(synthguest.Main(os.Args[1:]))
	case "recorder":
		os.Exit(recorderChild(os.Args[1:]))
	}
	if v := os.Getenv("CKPTFS_MIN_CLEAN_RUN"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			panic(err)
		}
		minCleanRun = n
	}
	if os.Getenv("CKPTFS_SERIAL_SCAN") != "" {
		parallelScan = false
	}
	os.Exit(m.Run())
}

// recorderChild records until killed: -store DIR -run R -qmp SOCK -mem PATH -interval D.
func recorderChild(args []string) int {
	fs := flag.NewFlagSet("recorder", flag.ContinueOnError)
	store := fs.String("store", "", "")
	cfg := Config{}
	fs.StringVar(&cfg.Run, "run", "", "")
	fs.StringVar(&cfg.QMPSocket, "qmp", "", "")
	fs.StringVar(&cfg.MemPath, "mem", "", "")
	fs.DurationVar(&cfg.Interval, "interval", 20*time.Millisecond, "")
	fs.BoolVar(&cfg.DeviceState, "dev", false, "")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	st, err := index.Open(*store, index.Options{Create: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer st.Close()
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.OnCheckpoint = func(cs CheckpointStats) { fmt.Println("committed", cs.Checkpoint) }
	if _, err := Record(context.Background(), st, cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// shmDir returns a fresh directory on tmpfs for RAM files (like QEMU's
// /dev/shm backends); MADV_PAGEOUT on a disk file would write it back.
func shmDir(t testing.TB) string {
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = ""
	}
	dir, err := os.MkdirTemp(base, "ckptfs-kvmrec-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

type testGuest struct {
	cfg synthguest.Config
	cmd *exec.Cmd
}

// startGuest runs a synthetic guest as a child process (the pagemap tracker
// needs the guest in another process) and waits for its QMP socket.
func startGuest(t testing.TB, cfg synthguest.Config) *testGuest {
	t.Helper()
	dir := shmDir(t)
	if cfg.MemPath == "" {
		cfg.MemPath = filepath.Join(dir, "ram")
	}
	if cfg.QMPSocket == "" {
		cfg.QMPSocket = filepath.Join(dir, "qmp.sock")
	}
	cmd := exec.Command(os.Args[0], synthguest.Args(cfg)...)
	cmd.Env = append(os.Environ(), roleEnv+"=guest")
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	g := &testGuest{cfg: cfg, cmd: cmd}
	t.Cleanup(g.kill)
	if err := synthguest.WaitReady(cfg.QMPSocket, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *testGuest) kill() {
	if g.cmd.ProcessState == nil {
		_ = g.cmd.Process.Kill()
		_ = g.cmd.Wait()
	}
}

// status asks the guest for its run state over a second QMP connection.
func (g *testGuest) status(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, g.cfg.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	st, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Status
}

func quietLogger() *slog.Logger {
	if testing.Verbose() && os.Getenv("CKPTFS_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func openStore(t testing.TB, dir string) *index.Store {
	t.Helper()
	opts := index.Options{Create: true}
	if dir == "" {
		opts.InMemory = true
	}
	st, err := index.Open(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// checkImages compares every committed checkpoint of run with the guest's
// frame hashes at the same pause.
func checkImages(t testing.TB, st *index.Store, run, truthDir string) int {
	t.Helper()
	ri, err := st.Run(run)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 256*pageSize)
	for i := 0; i < ri.Checkpoints; i++ {
		want, err := synthguest.ReadPauseHashes(truthDir, i)
		if err != nil {
			t.Fatalf("truth of pause %d: %v", i, err)
		}
		if uint64(len(want)) != ri.Frames {
			t.Fatalf("pause %d has %d frames, run %d", i, len(want), ri.Frames)
		}
		cp, err := st.OpenCheckpoint(run, i)
		if err != nil {
			t.Fatal(err)
		}
		bad := 0
		for p := uint64(0); p < ri.Frames; p += uint64(len(buf) / pageSize) {
			b := buf[:min(uint64(len(buf)), (ri.Frames-p)*pageSize)]
			if err := cp.ReadFrames(p, b); err != nil {
				t.Fatalf("checkpoint %d: %v", i, err)
			}
			for k := 0; k < len(b)/pageSize; k++ {
				if synthguest.FrameHash(b[k*pageSize:(k+1)*pageSize]) != want[p+uint64(k)] {
					if bad < 5 {
						t.Errorf("run %s checkpoint %d: frame %d differs from the guest's RAM at pause %d", run, i, p+uint64(k), i)
					}
					bad++
				}
			}
		}
		cp.Close()
		if bad > 0 {
			t.Fatalf("run %s checkpoint %d: %d frames differ", run, i, bad)
		}
	}
	return ri.Checkpoints
}

func bitmapDiff(a, b *roaring.Bitmap) string {
	return fmt.Sprintf("only in first: %s only in second: %s",
		trunc(index.FormatList(roaring.AndNot(a, b))), trunc(index.FormatList(roaring.AndNot(b, a))))
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

func isExit(err error) bool {
	var ee *exec.ExitError
	return errors.As(err, &ee)
}

// faultAroundOff reports whether the guest pid mapped path with fault-around
// off: its mapping is registered with userfaultfd write-protect ("uw" in
// the VmFlags of smaps).
func faultAroundOff(t testing.TB, pid int, path string) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		t.Fatal(err)
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":"):
			in = len(f) == 6 && f[5] == path
		case in && len(f) > 0 && f[0] == "VmFlags:":
			return slices.Contains(f[1:], "uw")
		}
	}
	t.Fatalf("guest %d has no mapping of %s", pid, path)
	return false
}
