package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const crashChildEnv = "CKPTFS_INDEX_CRASH_CHILD"

func TestMain(m *testing.M) {
	if args := os.Getenv(crashChildEnv); args != "" {
		// The child of TestCrashDuringImport: import and let the parent kill us.
		parts := strings.Split(args, "|")
		st, err := Open(parts[0], Options{Create: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if _, err := st.Import(context.Background(), ImportSpec{Run: "crash", Dumps: parts[1:]}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		st.Close()
		os.Exit(0)
	}
	if dir := os.Getenv(openChildEnv); dir != "" {
		// The child of TestOpenPermissionDenied, run as another uid.
		_, err := Open(dir, Options{})
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// TestCrashDuringImport kills an importing child process at random moments;
// the store must open, verify, and export every visible checkpoint exactly.
func TestCrashDuringImport(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	dir := t.TempDir()
	// 12 MiB dumps: larger than smallCheckpoint, so commits go through ingest;
	// every second dump changes few frames, so batches are exercised too.
	const frames = 3 * 1024
	h := randomHistory(rng, frames, 6)
	for i := 1; i < len(h.images); i += 2 {
		copy(h.images[i], h.images[i-1])
		h.images[i][rng.IntN(frames)*PageSize] ^= 0xff
	}
	var dumps []string
	for i, img := range h.images {
		p := filepath.Join(dir, fmt.Sprintf("dump%d", i))
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, p)
	}
	// Time one undisturbed import to spread the kills over it.
	start := time.Now()
	runChild(t, filepath.Join(dir, "reference"), dumps, -1)
	full := time.Since(start)
	sawPartial := false
	for trial := 0; trial < 8; trial++ {
		store := filepath.Join(dir, fmt.Sprintf("store%d", trial))
		runChild(t, store, dumps, time.Duration(rng.Int64N(int64(full))))
		st, err := Open(store, Options{Create: true})
		if err != nil {
			t.Fatalf("trial %d: reopen after kill: %v", trial, err)
		}
		ri, err := st.Run("crash")
		if errors.Is(err, ErrRunNotFound) {
			st.Close()
			continue // killed before checkpoint 0 committed: nothing visible, as it must be
		}
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		if ri.Checkpoints < len(dumps) {
			sawPartial = true
		}
		if _, err := st.Verify(context.Background(), "", nil); err != nil {
			t.Fatalf("trial %d: verify after kill: %v", trial, err)
		}
		for i := 0; i < ri.Checkpoints; i++ {
			out := filepath.Join(dir, "out")
			if err := st.Export(context.Background(), ExportSpec{Run: "crash", Interval: i, Out: out}); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(out)
			if !bytes.Equal(got, h.images[i]) {
				t.Fatalf("trial %d: checkpoint %d differs from its dump after a kill", trial, i)
			}
		}
		t.Logf("trial %d: %d of %d checkpoints visible after kill", trial, ri.Checkpoints, len(dumps))
		st.Close()
	}
	if !sawPartial {
		t.Log("no kill landed in the middle of an import this time")
	}
}

func runChild(t *testing.T, store string, dumps []string, killAfter time.Duration) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashChildEnv+"="+store+"|"+strings.Join(dumps, "|"))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if killAfter < 0 {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("import child: %v: %s", err, stderr.String())
		}
		return
	}
	time.Sleep(killAfter)
	_ = cmd.Process.Signal(syscall.SIGKILL)
	_ = cmd.Wait()
}
