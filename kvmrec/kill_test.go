package kvmrec

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

// TestKillRecorder SIGKILLs a recorder process at random moments (during
// pauses, commits, checkpoint 0, ...) and checks after every kill that the
// store opens, verifies, and that every committed checkpoint of every run so
// far equals the guest's RAM at that pause. 6 kills by default (the CLI's
// TestRecordKilled in test/integration kills `ckptfs record` 20 times);
// CKPTFS_CRASH_TRIALS=N runs N, CKPTFS_KILL_SEED repeats a sequence.
func TestKillRecorder(t *testing.T) {
	t.Parallel()
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CKPTFS_KILL_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (CKPTFS_KILL_SEED)", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	storeDir := t.TempDir()
	type attempt struct{ run, truth string }
	var runs []attempt
	committed, leftPaused := 0, 0
	kills := 6
	if s := os.Getenv("CKPTFS_CRASH_TRIALS"); s != "" {
		if _, err := fmt.Sscan(s, &kills); err != nil || kills < 1 {
			t.Fatalf("CKPTFS_CRASH_TRIALS=%q: want a positive count", s)
		}
	}
	t.Logf("%d kills (CKPTFS_CRASH_TRIALS)", kills)
	for it := 0; it < kills; it++ {
		gcfg := synthguest.Config{RAMSize: 8 << 20, WSFraction: 0.1, DirtyFraction: 0.05, Locality: 0.3,
			Seed: uint64(it + 1), TruthDir: t.TempDir(), TickInterval: time.Millisecond, TickFrames: 64}
		g := startGuest(t, gcfg)
		run := fmt.Sprintf("k%d", it)
		args := []string{"-store", storeDir, "-run", run, "-qmp", g.cfg.QMPSocket, "-mem", g.cfg.MemPath, "-interval", "15ms"}
		if it%2 == 1 {
			args = append(args, "-dev")
		}
		cmd := exec.Command(os.Args[0], args...)
		cmd.Env = append(os.Environ(), roleEnv+"=recorder")
		cmd.Stderr = os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The child prints a line per commit. Kill it at a random moment
		// of its startup or of the interval after the target-th commit.
		commits := make(chan int, 100)
		go func() {
			sc := bufio.NewScanner(out)
			n := 0
			for sc.Scan() {
				n++
				commits <- n
			}
			close(commits)
		}()
		target := rng.IntN(7)
		var when string
		if target == 0 {
			d := time.Duration(rng.IntN(300)) * time.Millisecond
			time.Sleep(d)
			when = fmt.Sprintf("%v after start", d)
		} else {
			deadline := time.After(60 * time.Second)
		wait:
			for {
				select {
				case n, ok := <-commits:
					if !ok {
						t.Fatal("recorder ended before the kill")
					}
					if n >= target {
						break wait
					}
				case <-deadline:
					t.Fatalf("recorder committed fewer than %d checkpoints in 60 s", target)
				}
			}
			d := time.Duration(rng.IntN(20000)) * time.Microsecond
			time.Sleep(d)
			when = fmt.Sprintf("%v after commit %d", d, target-1)
		}
		_ = cmd.Process.Kill()
		err = cmd.Wait()
		if err == nil || !isExit(err) {
			t.Fatalf("recorder ended before the kill: %v", err)
		}
		// Killed inside a pause, the recorder leaves the guest paused
		// (the next recording warns and resumes it: TestRecordFindsVMPaused).
		if g.status(t) == "paused" {
			leftPaused++
			when += ", guest left paused"
		}
		g.kill()
		runs = append(runs, attempt{run, gcfg.TruthDir})

		st, err := index.Open(storeDir, index.Options{Create: true})
		if err != nil {
			t.Fatalf("kill %d %s: store does not open: %v", it, when, err)
		}
		n := 0
		for _, a := range runs {
			if _, err := st.Run(a.run); errors.Is(err, index.ErrRunNotFound) {
				continue // killed before checkpoint 0 was committed
			} else if err != nil {
				t.Fatalf("kill %d: run %s: %v", it, a.run, err)
			}
			n += checkImages(t, st, a.run, a.truth)
		}
		rep, err := st.Verify(context.Background(), "", nil)
		if err != nil || len(rep.Problems) > 0 {
			t.Fatalf("kill %d: verify: %v %v", it, err, rep.Problems)
		}
		t.Logf("kill %d %s: %d checkpoints in %d runs, all equal to the guest's RAM", it, when, n, rep.Runs)
		if n < committed {
			t.Fatalf("kill %d: committed checkpoints went from %d to %d", it, committed, n)
		}
		committed = n
		st.Close()
	}
	t.Logf("%d of %d kills left the guest paused", leftPaused, kills)
	// The store still takes a recording.
	gcfg := synthguest.Config{RAMSize: 8 << 20, WSFraction: 0.1, DirtyFraction: 0.05, Seed: 99, TruthDir: t.TempDir()}
	g := startGuest(t, gcfg)
	st := openStore(t, storeDir)
	defer st.Close()
	if _, err := Record(context.Background(), st, Config{Run: "after", QMPSocket: g.cfg.QMPSocket, MemPath: g.cfg.MemPath,
		Interval: 20 * time.Millisecond, Count: 3, Logger: quietLogger()}); err != nil {
		t.Fatal(err)
	}
	checkImages(t, st, "after", gcfg.TruthDir)
}
