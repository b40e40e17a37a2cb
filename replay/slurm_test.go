package replay_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/replay"
)

// TestRunSlurmFake drives RunSlurm with stand-ins for sbatch, squeue and
// scancel: a refused submission, a job whose task leaves no report, and a
// cancellation.
func TestRunSlurmFake(t *testing.T) {
	mnt := detRun(t)
	args := filepath.Join(t.TempDir(), "sbatch-args")
	base := replay.SlurmConfig{Binary: "/nonexistent/ckptfs", TaskArgs: []string{"--deadline", "1m"},
		Sbatch:  fakeCommand(t, "sbatch", `echo "$@" > `+args+`; echo '42;cluster'`),
		Squeue:  fakeCommand(t, "squeue", "exit 0"), // the job has left the queue
		Scancel: fakeCommand(t, "scancel", "exit 0")}
	cfg := replay.RunConfig{Mount: mnt, Run: "d", Jobs: 3}

	t.Run("refused", func(t *testing.T) {
		sc := base
		sc.Dir = filepath.Join(t.TempDir(), "job")
		sc.Sbatch = fakeCommand(t, "sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2; exit 1")
		_, err := replay.RunSlurm(context.Background(), cfg, sc)
		if err == nil || !strings.Contains(err.Error(), "Invalid partition name specified") || strings.Contains(err.Error(), "\n") {
			t.Errorf("refused submission: %v", err)
		}
	})

	t.Run("no report", func(t *testing.T) {
		sc := base
		sc.Dir = filepath.Join(t.TempDir(), "job")
		rep, err := replay.RunSlurm(context.Background(), cfg, sc)
		if !errors.Is(err, replay.ErrNotVerified) || rep.Slurm == nil || rep.Slurm.JobID != "42" {
			t.Fatalf("RunSlurm: %v, %+v", err, rep.Slurm)
		}
		if iv := rep.Sparse.Intervals; len(iv) != 1 || iv[0].Verified() || !strings.Contains(iv[0].Error, "left no report and no output") {
			t.Errorf("intervals: %+v", iv)
		}
		got, _ := os.ReadFile(args)
		for _, want := range []string{"--parsable", "--array=0%3", "--output=" + filepath.Join(sc.Dir, "interval-%a.out"), filepath.Join(sc.Dir, "replay-interval.sh")} {
			if !strings.Contains(string(got), want) {
				t.Errorf("sbatch %s: want %s", got, want)
			}
		}
		script, err := os.ReadFile(filepath.Join(sc.Dir, "replay-interval.sh"))
		if err != nil || !strings.Contains(string(script), "'/nonexistent/ckptfs' replay interval --mount '"+mnt+"' --run 'd' --interval \"$i\"") ||
			!strings.Contains(string(script), "'--deadline' '1m'") {
			t.Errorf("batch script: %s, %v", script, err)
		}
	})

	t.Run("reported", func(t *testing.T) {
		// The task's report appears while squeue still lists the job: the
		// report ends the wait.
		sc := base
		sc.Dir = filepath.Join(t.TempDir(), "job")
		sc.Sbatch = fakeCommand(t, "sbatch", `(sleep 0.3; echo '{"run":"d","interval":0,"source":"sparse","verdict":"verified","frames_verified":5}' > "$PWD/interval-0.json") & echo 43`)
		sc.Squeue = fakeCommand(t, "squeue", "echo 43_0")
		var got []int
		c := cfg
		c.OnInterval = func(r replay.IntervalReport) { got = append(got, r.Interval) }
		t0 := time.Now()
		rep, err := replay.RunSlurm(context.Background(), c, sc)
		if err != nil || !rep.AllVerified || rep.Sparse.Verified != 1 || rep.Sparse.Intervals[0].FramesVerified != 5 {
			t.Fatalf("RunSlurm: %v, %+v", err, rep.Sparse)
		}
		if len(got) != 1 || got[0] != 0 {
			t.Errorf("OnInterval saw %v, want [0]", got)
		}
		if d := time.Since(t0); d > 4*time.Second {
			t.Errorf("RunSlurm took %s after the report appeared", d)
		}
	})

	t.Run("canceled", func(t *testing.T) {
		sc := base
		sc.Dir = filepath.Join(t.TempDir(), "job")
		canceled := filepath.Join(t.TempDir(), "canceled")
		sc.Squeue = fakeCommand(t, "squeue", "echo 42_0") // still running
		sc.Scancel = fakeCommand(t, "scancel", `echo "$@" > `+canceled)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel)
		rep, err := replay.RunSlurm(ctx, cfg, sc)
		if err == nil || len(rep.Sparse.Intervals) != 1 || !strings.Contains(rep.Sparse.Intervals[0].Error, "not replayed") {
			t.Errorf("canceled: %v, %+v", err, rep.Sparse.Intervals)
		}
		if got, _ := os.ReadFile(canceled); strings.TrimSpace(string(got)) != "42" {
			t.Errorf("scancel %q, want the job id", got)
		}
	})
}
