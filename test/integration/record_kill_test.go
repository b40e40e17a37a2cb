package integration

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

// TestRecordKilled SIGKILLs `ckptfs record` of the synthetic guest at random
// moments: at startup, around a pause or a commit, during the live packing
// (--pack-live) or the packing after the last checkpoint. After every kill
// `ckptfs verify` must pass and every committed checkpoint of every run so
// far must equal the guest's RAM at that pause (the guest's own hashes).
// kvmrec's TestKillRecorder does the same for the recorder alone; this one
// kills the command a user runs. 20 kills by default; CKPTFS_CRASH_TRIALS=N
// runs N, CKPTFS_KILL_SEED repeats a sequence.
func TestRecordKilled(t *testing.T) {
	trials := 20
	if s := os.Getenv("CKPTFS_CRASH_TRIALS"); s != "" {
		if n, err := strconv.Atoi(s); err != nil || n < 1 {
			t.Fatalf("CKPTFS_CRASH_TRIALS=%q: want a positive count", s)
		} else {
			trials = n
		}
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CKPTFS_KILL_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("%d kills (CKPTFS_CRASH_TRIALS), seed %d (CKPTFS_KILL_SEED)", trials, seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	truths := map[string]string{} // run -> the truth directory of its guest
	const count = 5
	committed := 0 // checkpoints committed by the kills so far
	for it := 0; it < trials; it++ {
		tdir := filepath.Join(dir, fmt.Sprintf("t%d", it))
		truth := filepath.Join(tdir, "truth")
		os.MkdirAll(truth, 0o700)
		mem, sock := filepath.Join(tdir, "ram"), filepath.Join(tdir, "qmp.sock")
		guest := startDaemon(t, "synth-guest", "-mem", mem, "-ram-size", "8M", "-qmp", sock,
			"-ws", "0.1", "-dirty", "0.05", "-locality", "0.3", "-seed", strconv.Itoa(it+1), "-truth", truth,
			"-tick", "1ms", "-tick-frames", "64")
		waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }, "synthetic guest")

		run := fmt.Sprintf("k%d", it)
		args := []string{"--store", store, "record", "--run", run, "--qmp", sock, "--mem", mem,
			"--interval", "30ms", "--count", strconv.Itoa(count)}
		if it%2 == 1 {
			args = append(args, "--pack-live", "--device-state")
		}
		cmd := exec.Command(ckptfsBin, args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// record prints "checkpoint N: ..." per checkpoint taken. Kill
		// at a random moment of its startup, after the target-th
		// checkpoint, or after the last one (packing).
		seen := make(chan int, 100)
		var log strings.Builder
		go func() {
			sc := bufio.NewScanner(stderr)
			n := 0
			for sc.Scan() {
				log.WriteString(sc.Text() + "\n")
				if strings.HasPrefix(sc.Text(), "checkpoint ") {
					n++
					seen <- n
				}
			}
			close(seen)
		}()
		target := rng.IntN(count + 1)
		var when string
		if target == 0 {
			d := time.Duration(rng.IntN(200)) * time.Millisecond
			time.Sleep(d)
			when = fmt.Sprintf("%v after start", d)
		} else {
			deadline := time.After(30 * time.Second)
		wait:
			for {
				select {
				case n, ok := <-seen:
					if !ok {
						break wait // ended before the target: packing done
					}
					if n >= target {
						break wait
					}
				case <-deadline:
					t.Fatalf("record took fewer than %d checkpoints in 30 s", target)
				}
			}
			d := time.Duration(rng.IntN(40000)) * time.Microsecond
			time.Sleep(d)
			when = fmt.Sprintf("%v after checkpoint %d", d, target-1)
		}
		_ = cmd.Process.Signal(syscall.SIGKILL)
		if err := cmd.Wait(); err == nil {
			when += " (it had finished)"
		}
		guest.cmd.Process.Kill()
		<-guest.done
		truths[run] = truth

		// A kill before the first commit ever may leave no store (no
		// MANIFEST yet): that is consistent, and the next record creates
		// it. Any other verify failure is a defect.
		code, out, errOut := ckptfs(t, store, "verify")
		if code != 0 {
			if committed == 0 && strings.Contains(errOut, "no store at") {
				t.Logf("kill %d %s: no store yet: %s", it, when, strings.TrimSpace(errOut))
				continue
			}
			t.Fatalf("kill %d %s: verify: exit %d: %s", it, when, code, strings.TrimSpace(errOut))
		}
		st, err := index.Open(store, index.Options{})
		if err != nil {
			t.Fatalf("kill %d %s: the store does not open: %v", it, when, err)
		}
		n := 0
		for r, tr := range truths {
			n += checkAgainstGuest(t, st, r, tr)
		}
		st.Close()
		committed = n
		t.Logf("kill %d %s: %d checkpoints all equal to the guest's RAM; verify: %s", it, when, n, strings.TrimSpace(out))
	}
}

// checkAgainstGuest compares every committed checkpoint of run with the
// guest's frame hashes of the same pause, and returns how many there are
// (0 when the run was never committed).
func checkAgainstGuest(t *testing.T, st *index.Store, run, truth string) int {
	t.Helper()
	ri, err := st.Run(run)
	if err != nil {
		return 0
	}
	buf := make([]byte, 256*index.PageSize)
	for i := 0; i < ri.Checkpoints; i++ {
		want, err := synthguest.ReadPauseHashes(truth, i)
		if err != nil || uint64(len(want)) != ri.Frames {
			t.Fatalf("run %s: truth of pause %d: %v (%d frames, run %d)", run, i, err, len(want), ri.Frames)
		}
		cp, err := st.OpenCheckpoint(run, i)
		if err != nil {
			t.Fatal(err)
		}
		for p := uint64(0); p < ri.Frames; p += uint64(len(buf) / index.PageSize) {
			b := buf[:min(uint64(len(buf)), (ri.Frames-p)*index.PageSize)]
			if err := cp.ReadFrames(p, b); err != nil {
				t.Fatalf("run %s checkpoint %d: %v", run, i, err)
			}
			for k := 0; k < len(b)/index.PageSize; k++ {
				if synthguest.FrameHash(b[k*index.PageSize:(k+1)*index.PageSize]) != want[p+uint64(k)] {
					t.Fatalf("run %s checkpoint %d: frame %d differs from the guest's RAM at pause %d", run, i, p+uint64(k), i)
				}
			}
		}
		cp.Close()
	}
	return ri.Checkpoints
}
