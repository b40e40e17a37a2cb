package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// Child processes. A test binary re-executed with CKPTFS_FS_CHILD set runs
// one of the child modes (child_test.go) instead of the tests: every page
// fault on a mount is taken in a child, never in the process serving it.
const childEnv = "CKPTFS_FS_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		var args []string
		if err := json.Unmarshal([]byte(os.Getenv(childEnv+"_ARGS")), &args); err != nil {
			fmt.Fprintln(os.Stderr, "child args:", err)
			os.Exit(2)
		}
		os.Exit(childMain(mode, args))
	}
	TuneGC(0) // the benchmarks serve mounts in this process, as the daemon does
	code := m.Run()
	cleanupBench()
	os.Exit(code)
}

// childCmd returns a command that runs child mode with args.
func childCmd(mode string, args ...string) *exec.Cmd {
	a, _ := json.Marshal(args)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode, childEnv+"_ARGS="+string(a))
	return cmd
}

// runChild runs a child to completion and returns its stdout.
func runChild(t testing.TB, mode string, args ...string) string {
	t.Helper()
	cmd := childCmd(mode, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("child %s %v: %v\n%s", mode, args, err, stderr.String())
	}
	return stdout.String()
}

// testLogger sends the mount's log lines to the test log and keeps them.
type logSink struct {
	t     testing.TB
	lines chan string
}

func (s *logSink) Write(p []byte) (int, error) {
	line := strings.TrimSpace(string(p))
	s.t.Log(line)
	select {
	case s.lines <- line:
	default:
	}
	return len(p), nil
}

func newTestLogger(t testing.TB) (*slog.Logger, chan string) {
	s := &logSink{t: t, lines: make(chan string, 1024)}
	return slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelInfo})), s.lines
}

// mountT mounts src under a temporary directory and unmounts it when the
// test ends.
func mountT(t testing.TB, src Source, opts MountOptions) (*Server, string) {
	t.Helper()
	testenv.RequireFUSE(t)
	mnt := filepath.Join(t.TempDir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if opts.Logger == nil {
		opts.Logger, _ = newTestLogger(t)
	}
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	srv, err := Mount(mnt, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
		}
	})
	return srv, mnt
}

// fixture is a run written to a store, with everything a test compares
// against.
type fixture struct {
	name    string
	frames  uint64
	images  [][]byte          // content of checkpoint i
	ws      []*roaring.Bitmap // W_i, for i < len(images)-1
	dev     [][]byte          // device state of checkpoint i, or nil
	zero    []byte
	written int // checkpoints committed so far
}

// newFixture generates a run of n checkpoints of frames frames: random
// frames, repeated frames and zero frames; every interval touches random
// runs of frames (W_i) and changes some of them, to new content, to a copy
// of another frame, or to zeros.
func newFixture(name string, frames uint64, n int, seed uint64) *fixture {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	fx := &fixture{name: name, frames: frames, zero: make([]byte, pageSize)}
	img := make([]byte, frames*pageSize)
	common := make([]byte, pageSize)
	fillRandom(r, common)
	for p := uint64(0); p < frames; p++ {
		fr := img[p*pageSize : (p+1)*pageSize]
		switch x := r.IntN(10); {
		case x < 5:
			fillRandom(r, fr)
		case x < 7:
			copy(fr, common) // repeated content
		default: // zero
		}
	}
	fx.images = append(fx.images, img)
	fx.dev = append(fx.dev, []byte("device state 0"))
	for i := 1; i < n; i++ {
		prev := fx.images[i-1]
		next := bytes.Clone(prev)
		ws := roaring.New()
		for ws.GetCardinality() < frames/4 {
			start := r.Uint64N(frames)
			ws.AddRange(start, min(frames, start+1+r.Uint64N(48)))
		}
		it := ws.Iterator()
		for it.HasNext() {
			p := uint64(it.Next())
			fr := next[p*pageSize : (p+1)*pageSize]
			switch x := r.IntN(10); {
			case x < 3:
				fillRandom(r, fr)
			case x < 4:
				q := r.Uint64N(frames)
				copy(fr, prev[q*pageSize:(q+1)*pageSize])
			case x < 5:
				clear(fr)
			}
		}
		fx.ws = append(fx.ws, ws)
		fx.images = append(fx.images, next)
		if i%2 == 0 {
			fx.dev = append(fx.dev, []byte(fmt.Sprintf("device state %d", i)))
		} else {
			fx.dev = append(fx.dev, nil)
		}
	}
	return fx
}

func fillRandom(r *rand.Rand, b []byte) {
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
}

func (fx *fixture) frame(i int, pfn uint64) []byte {
	return fx.images[i][pfn*pageSize : (pfn+1)*pageSize]
}

// write commits checkpoints [fx.written, upto) to the run writer w.
func (fx *fixture) write(t testing.TB, w *index.RunWriter, upto int) {
	t.Helper()
	for i := fx.written; i < upto; i++ {
		for p := uint64(0); p < fx.frames; p++ {
			fr := fx.frame(i, p)
			if i == 0 && bytes.Equal(fr, fx.zero) {
				continue
			}
			if err := w.Put(p, fr); err != nil {
				t.Fatal(err)
			}
		}
		info := index.CommitInfo{DeviceState: fx.dev[i], Downtime: time.Duration(i+1) * time.Millisecond}
		if i > 0 {
			info.WorkingSet = fx.ws[i-1]
		}
		if _, err := w.Commit(context.Background(), info); err != nil {
			t.Fatal(err)
		}
	}
	fx.written = upto
}

// create starts the run in st and commits its first upto checkpoints.
func (fx *fixture) create(t testing.TB, st *index.Store, upto int) *index.RunWriter {
	t.Helper()
	w, err := st.CreateRun(index.RunSpec{Name: fx.name, RAMSize: fx.frames * pageSize, Recorder: "test", Tracker: "test"})
	if err != nil {
		t.Fatal(err)
	}
	fx.write(t, w, upto)
	return w
}

// sparseImage is <i>.ram as it should read: W_i frames of checkpoint i, zeros
// elsewhere.
func (fx *fixture) sparseImage(i int) []byte {
	out := make([]byte, len(fx.images[i]))
	it := fx.ws[i].Iterator()
	for it.HasNext() {
		p := uint64(it.Next())
		copy(out[p*pageSize:(p+1)*pageSize], fx.frame(i, p))
	}
	return out
}

// nonZero is the set of frames of checkpoint i that are not all zeros.
func (fx *fixture) nonZero(i int) *roaring.Bitmap {
	bm := roaring.New()
	for p := uint64(0); p < fx.frames; p++ {
		if !bytes.Equal(fx.frame(i, p), fx.zero) {
			bm.Add(uint32(p))
		}
	}
	return bm
}

// writeFile writes b to a new file in dir and returns its path.
func writeFile(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// openStore opens an on-disk store in a temporary directory.
func openStore(t testing.TB) *index.Store {
	t.Helper()
	st, err := index.Open(filepath.Join(t.TempDir(), "store"), index.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

var _ = io.EOF
