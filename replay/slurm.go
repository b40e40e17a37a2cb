package replay

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// SlurmConfig describes RunSlurm: the intervals of a run replayed as one
// Slurm job array, a task per interval, on the nodes the cluster's
// scheduler picks, instead of as child processes of this one.
type SlurmConfig struct {
	// Binary is the ckptfs executable every task runs (`ckptfs replay
	// interval`); it must have this path on the nodes.
	Binary string
	// TaskArgs are the arguments of `replay interval` that every task
	// gets after --mount, --run, --interval and --json (plugins,
	// --deadline, --precision, --ws-plugin, --qemu), with absolute paths.
	TaskArgs []string
	// Dir receives the batch script, each task's output
	// (interval-<I>.out) and report (interval-<I>.json). The nodes must
	// see it at the same path, like the mount. It is created owner-only.
	Dir string
	// SbatchArgs go to sbatch before the script: partition, account,
	// time limit, constraints, as the cluster wants them.
	SbatchArgs []string
	// Sbatch, Squeue and Scancel are the Slurm commands; default from
	// $PATH.
	Sbatch, Squeue, Scancel string
}

// SlurmJob is where a run replayed by RunSlurm went.
type SlurmJob struct {
	JobID string `json:"job_id"`
	Dir   string `json:"dir"`
}

// slurmPoll is how often RunSlurm looks for the reports of finished
// tasks, slurmQueuePoll how often it asks the queue whether the job is
// still there.
const (
	slurmPoll      = 500 * time.Millisecond
	slurmQueuePoll = 5 * time.Second
	// slurmQueueGiveUp is how long squeue may fail (the controller gone)
	// before RunSlurm cancels the job and says so.
	slurmQueueGiveUp = 2 * time.Minute
)

// RunSlurm replays the intervals of a deterministic run like Run, but as a
// Slurm job array (sbatch --array=<intervals>%<Jobs>): the scheduler
// places the tasks, Jobs at most at a time, and each runs `ckptfs replay
// interval` and writes its report into sc.Dir, which RunSlurm collects into
// the same RunReport as Run. The mount (cfg.Mount) must be readable at the
// same path on every node the job may use. Memory is measured per replay
// (each report's PeakRSS) only: the replays may share no machine.
// Canceling ctx cancels the job (scancel). A task that left no report
// counts as not verified, with the last line of its output as the reason.
func RunSlurm(ctx context.Context, cfg RunConfig, sc SlurmConfig) (RunReport, error) {
	rep := RunReport{Run: cfg.Run, Mount: cfg.Mount, Jobs: max(cfg.Jobs, 1)}
	if cfg.Compare {
		return rep, errorf(ErrBadConfig, "--compare-full measures the memory of replays on one machine; it does not go with --slurm")
	}
	if sc.Binary == "" || sc.Dir == "" {
		return rep, errorf(ErrBadConfig, "replay with Slurm: the ckptfs binary and the job directory are required")
	}
	rd, ivs, err := planRun(cfg)
	if err != nil {
		return rep, err
	}
	dir, err := filepath.Abs(sc.Dir)
	if err != nil {
		return rep, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return rep, fmt.Errorf("replay with Slurm: %w", err)
	}
	for _, i := range ivs { // reports of an earlier job in the same directory
		os.Remove(slurmReportPath(dir, i))
		os.Remove(slurmOutputPath(dir, i))
	}
	script := filepath.Join(dir, "replay-interval.sh")
	if err := os.WriteFile(script, []byte(slurmScript(sc, cfg, dir)), 0o700); err != nil {
		return rep, fmt.Errorf("replay with Slurm: %w", err)
	}
	t0 := time.Now()
	id, err := slurmSubmit(ctx, sc, append([]string{"--parsable", "--array=" + intervalList(ivs) + "%" + strconv.Itoa(rep.Jobs),
		"--job-name=ckptfs-replay-" + cfg.Run, "--output=" + filepath.Join(dir, "interval-%a.out")}, sc.SbatchArgs...), script, dir)
	if err != nil {
		return rep, err
	}
	job := SlurmJob{JobID: id, Dir: dir}
	if cfg.Logger != nil {
		cfg.Logger.Info("replay run: submitted to Slurm", "job", id, "tasks", len(ivs), "dir", dir)
	}
	// Done when every task has left its report, or when the job has left
	// the queue (a task that died leaves none).
	seen := map[int]bool{}
	tick := time.NewTicker(slurmPoll)
	defer tick.Stop()
	lastQueueCheck := time.Now()
	var queueErr error
	var queueFailingSince time.Time
	for len(seen) < len(ivs) {
		select {
		case <-ctx.Done():
			slurmCancel(sc, id)
		case <-tick.C:
		}
		if ctx.Err() != nil {
			break
		}
		collectSlurmReports(dir, ivs, seen, cfg.OnInterval)
		if time.Since(lastQueueCheck) >= slurmQueuePoll {
			lastQueueCheck = time.Now()
			gone, err := slurmJobGone(ctx, sc, id)
			if err == nil && gone {
				break
			}
			if err == nil || ctx.Err() != nil {
				queueFailingSince = time.Time{}
			} else if queueFailingSince.IsZero() {
				queueFailingSince = time.Now()
			} else if time.Since(queueFailingSince) > slurmQueueGiveUp {
				queueErr = fmt.Errorf("replay with Slurm: job %s: squeue has failed for %s: %v", id, slurmQueueGiveUp, err)
				break
			}
		}
	}
	if queueErr != nil {
		slurmCancel(sc, id)
		return rep, queueErr
	}
	rep.Slurm = &job
	collectSlurmReports(dir, ivs, seen, cfg.OnInterval)
	rep.Sparse = PassReport{Source: "sparse", Intervals: make([]IntervalReport, len(ivs))}
	for k, i := range ivs {
		rep.Sparse.Intervals[k] = readSlurmReport(dir, cfg.Run, i, ctx.Err())
	}
	rep.Sparse.Wall = time.Since(t0)
	rep.Sparse.total()
	rep.WSRatio = rep.Sparse.meanWSFrames() / float64(rd.frames())
	rep.AllVerified = rep.Sparse.AllVerified
	return rep, rep.notVerified()
}

// slurmScript is the batch script of the job array: task I replays
// interval I and writes its report into dir.
func slurmScript(sc SlurmConfig, cfg RunConfig, dir string) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n")
	b.WriteString("# A task of `ckptfs replay run --slurm`: replays interval $SLURM_ARRAY_TASK_ID.\n")
	b.WriteString("i=\"$SLURM_ARRAY_TASK_ID\"\n")
	fmt.Fprintf(&b, "exec %s replay interval --mount %s --run %s --interval \"$i\" --json %s/\"interval-$i.json\"",
		shellQuote(sc.Binary), shellQuote(cfg.Mount), shellQuote(cfg.Run), shellQuote(dir))
	for _, a := range sc.TaskArgs {
		b.WriteString(" " + shellQuote(a))
	}
	b.WriteString("\n")
	return b.String()
}

// intervalList writes intervals as sbatch --array wants them: 1,2,5.
func intervalList(ivs []int) string {
	s := make([]string, len(ivs))
	for k, i := range ivs {
		s[k] = strconv.Itoa(i)
	}
	return strings.Join(s, ",")
}

func slurmReportPath(dir string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("interval-%d.json", i))
}

func slurmOutputPath(dir string, i int) string {
	return filepath.Join(dir, fmt.Sprintf("interval-%d.out", i))
}

// collectSlurmReports adds to seen every interval whose report appeared
// since the last call, and calls onInterval (when set) with the report.
func collectSlurmReports(dir string, ivs []int, seen map[int]bool, onInterval func(IntervalReport)) {
	for _, i := range ivs {
		if seen[i] {
			continue
		}
		if r, ok := parseSlurmReport(slurmReportPath(dir, i)); ok {
			seen[i] = true
			if onInterval != nil {
				onInterval(r)
			}
		}
	}
}

// parseSlurmReport reads a task's report; a report that is missing or
// still being written is not there yet.
func parseSlurmReport(path string) (IntervalReport, bool) {
	data, err := os.ReadFile(path)
	if err != nil {
		return IntervalReport{}, false
	}
	var r IntervalReport
	if json.Unmarshal(data, &r) != nil || r.Verdict == "" {
		return IntervalReport{}, false
	}
	return r, true
}

// readSlurmReport is the report of interval i's task, or a failed one that
// says why there is none.
func readSlurmReport(dir, run string, i int, ctxErr error) IntervalReport {
	if r, ok := parseSlurmReport(slurmReportPath(dir, i)); ok {
		return r
	}
	why := "the task left no report"
	if ctxErr != nil {
		why = fmt.Sprintf("not replayed: %v", ctxErr)
	} else if data, err := os.ReadFile(slurmOutputPath(dir, i)); err == nil {
		lines := strings.Split(strings.TrimSpace(string(data)), "\n")
		if last := strings.TrimSpace(lines[len(lines)-1]); last != "" {
			why += ": " + last
		}
	} else {
		why += " and no output (the task did not run)"
	}
	return IntervalReport{Run: run, Interval: i, Source: "sparse", Verdict: VerdictFailed,
		Error: fmt.Sprintf("interval %d: %s", i, why)}
}

// slurmSubmit submits the job array and returns its id: sbatch
// --parsable prints "JOBID[;CLUSTER]".
func slurmSubmit(ctx context.Context, sc SlurmConfig, args []string, script, dir string) (string, error) {
	sbatch := sc.Sbatch
	if sbatch == "" {
		sbatch = "sbatch"
	}
	cmd := exec.CommandContext(ctx, sbatch, append(args, script)...)
	cmd.Dir = dir
	stderr := &tailbuf.Buffer{Max: 4096}
	cmd.Stderr = stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("replay with Slurm: %s: %s", sbatch, cmp.Or(stderr.LastLine(), err.Error()))
	}
	id := strings.TrimSpace(strings.SplitN(strings.TrimSpace(string(out)), ";", 2)[0])
	if id == "" {
		return "", fmt.Errorf("replay with Slurm: %s printed no job id", sbatch)
	}
	return id, nil
}

// slurmJobGone reports whether no task of the job is pending or running
// any more (squeue lists none).
func slurmJobGone(ctx context.Context, sc SlurmConfig, id string) (bool, error) {
	squeue := sc.Squeue
	if squeue == "" {
		squeue = "squeue"
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(qctx, squeue, "--noheader", "--array", "--format=%i", "--jobs="+id).Output()
	if err != nil {
		// squeue fails for a job it no longer knows at all.
		if ee, ok := err.(*exec.ExitError); ok && strings.Contains(string(ee.Stderr), "Invalid job id") {
			return true, nil
		}
		return false, err
	}
	return strings.TrimSpace(string(out)) == "", nil
}

// slurmCancel cancels the job, bounded in time; the scheduler ends the
// tasks.
func slurmCancel(sc SlurmConfig, job string) {
	scancel := sc.Scancel
	if scancel == "" {
		scancel = "scancel"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = exec.CommandContext(ctx, scancel, job).Run()
}
