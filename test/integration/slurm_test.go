package integration

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// TestReplayRunSlurm records the QEMU test guest deterministically and
// replays its intervals with replay run --slurm on a Slurm cluster of one
// node started for the test: every interval must be a task of one job
// array (its output file written by Slurm), verified, and collected into
// the report. A run whose tasks all fail (a QEMU that does not exist) must
// end in one error line and a non-zero exit, and a refused run (a missing
// plugin) must not submit anything.
func TestReplayRunSlurm(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.RequireQEMU(t)
	testenv.RequireSlurm(t)
	testenv.RequireRoot(t, "the test's Slurm daemons run as root")
	art, err := qemuguest.Build(qemuguest.CacheDir())
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	t.Setenv("SLURM_CONF", startSlurm(t))
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	startMount(t, store, mnt)
	mustCkptfs(t, store, "record", "--run", "det", "--deterministic", "--interval", "1s", "--count", "4", "--no-pack", "--",
		"-machine", "pc,accel=tcg", "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", "-kernel", art.Kernel, "-initrd", art.Initrd,
		"-append", qemuguest.DefaultAppend, "-serial", "file:"+filepath.Join(dir, "serial.log"))

	jobDir, report := filepath.Join(dir, "job"), filepath.Join(dir, "run.json")
	code, stdout, stderr := ckptfs(t, store, "replay", "run", "--mount", mnt, "--run", "det", "--slurm", "--slurm-dir", jobDir,
		"--jobs", "2", "--deadline", "3m", "--json", report)
	t.Logf("replay run --slurm: exit %d\n%s%s", code, stdout, stderr)
	if code != 0 {
		t.Fatalf("replay run --slurm: exit %d: %s", code, stderr)
	}
	var rep struct {
		Sparse struct {
			Intervals []struct {
				Interval int    `json:"interval"`
				Verdict  string `json:"verdict"`
				Misses   uint64 `json:"misses"`
			} `json:"intervals"`
			Verified int `json:"verified"`
		} `json:"sparse"`
		Slurm *struct {
			JobID string `json:"job_id"`
			Dir   string `json:"dir"`
		} `json:"slurm"`
		AllVerified bool `json:"all_verified"`
	}
	readJSON(t, report, &rep)
	if rep.Slurm == nil || rep.Slurm.JobID == "" || rep.Slurm.Dir != jobDir {
		t.Fatalf("report: slurm %+v, want the job id and %s", rep.Slurm, jobDir)
	}
	if n := len(rep.Sparse.Intervals); n != 3 || rep.Sparse.Verified != n || !rep.AllVerified {
		t.Fatalf("report: %d of %d intervals verified (want 3 of 3): %+v", rep.Sparse.Verified, n, rep.Sparse.Intervals)
	}
	for _, iv := range rep.Sparse.Intervals {
		if iv.Misses != 0 {
			t.Errorf("interval %d: %d misses", iv.Interval, iv.Misses)
		}
		// Slurm writes each task's output file; ckptfs does not.
		if _, err := os.Stat(filepath.Join(jobDir, fmt.Sprintf("interval-%d.out", iv.Interval))); err != nil {
			t.Errorf("interval %d ran as no Slurm task: %v", iv.Interval, err)
		}
	}
	if !strings.Contains(stdout, "Slurm job "+rep.Slurm.JobID) {
		t.Errorf("the table does not name the job %s:\n%s", rep.Slurm.JobID, stdout)
	}

	// Every task fails: not verified, one line.
	code, _, stderr = ckptfs(t, store, "replay", "run", "--mount", mnt, "--run", "det", "--slurm", "--slurm-dir", filepath.Join(dir, "job2"),
		"--intervals", "1", "--qemu", filepath.Join(dir, "no-such-qemu"))
	if lines := strings.Split(strings.TrimSpace(stderr), "\n"); code == 0 || !strings.Contains(lines[len(lines)-1], "not verified") {
		t.Errorf("tasks that fail: exit %d, stderr %q", code, stderr)
	}

	// Refused before anything is submitted.
	code, _, stderr = ckptfs(t, store, "replay", "run", "--mount", mnt, "--run", "det", "--slurm", "--slurm-dir", filepath.Join(dir, "job3"),
		"--plugin", filepath.Join(dir, "missing.so"))
	if code == 0 || len(strings.Split(strings.TrimSpace(stderr), "\n")) != 1 || !strings.Contains(stderr, "missing.so") {
		t.Errorf("missing plugin: exit %d, stderr %q", code, stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "job3")); err == nil {
		t.Errorf("a refused run left a job directory")
	}
}

// startSlurm starts a Slurm cluster of this one node (slurmctld and slurmd
// in the foreground, as root, without munge: auth/none, for the test only)
// and returns its slurm.conf. It stops both, and cancels every job, when
// the test ends.
func startSlurm(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{"state", "spool"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	host, _, _ = strings.Cut(host, ".")
	conf := filepath.Join(dir, "slurm.conf")
	text := fmt.Sprintf(`ClusterName=ckptfs-test
SlurmctldHost=%[1]s(127.0.0.1)
SlurmctldPort=%[3]d
SlurmdPort=%[4]d
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=%[2]s/state
SlurmdSpoolDir=%[2]s/spool
SlurmctldPidFile=%[2]s/slurmctld.pid
SlurmdPidFile=%[2]s/slurmd.pid
SlurmctldLogFile=%[2]s/slurmctld.log
SlurmdLogFile=%[2]s/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=%[1]s NodeAddr=127.0.0.1 CPUs=%[5]d State=UNKNOWN
PartitionName=test Nodes=%[1]s Default=YES MaxTime=INFINITE State=UP
`, host, dir, freePort(t), freePort(t), runtime.NumCPU())
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "SLURM_CONF="+conf)
	var daemons []*exec.Cmd
	for _, args := range [][]string{{"slurmctld", "-D", "-f", conf}, {"slurmd", "-D", "-f", conf, "-N", host}} {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		daemons = append(daemons, cmd)
	}
	t.Cleanup(func() {
		scancel := exec.Command("scancel", "--user=root")
		scancel.Env = env
		_ = scancel.Run()
		for k := len(daemons) - 1; k >= 0; k-- {
			_ = syscall.Kill(-daemons[k].Process.Pid, syscall.SIGTERM)
			done := make(chan struct{})
			go func(c *exec.Cmd) { _ = c.Wait(); close(done) }(daemons[k])
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				_ = syscall.Kill(-daemons[k].Process.Pid, syscall.SIGKILL)
				<-done
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		cmd := exec.CommandContext(ctx, "sinfo", "--noheader", "--format=%t")
		cmd.Env = env
		out, _ := cmd.Output()
		if strings.TrimSpace(string(out)) == "idle" {
			return conf
		}
		select {
		case <-ctx.Done():
			log, _ := os.ReadFile(filepath.Join(dir, "slurmctld.log"))
			dlog, _ := os.ReadFile(filepath.Join(dir, "slurmd.log"))
			t.Fatalf("the test's Slurm node is not idle after a minute (sinfo: %q)\nslurmctld.log:\n%s\nslurmd.log:\n%s", out, log, dlog)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// freePort returns a TCP port nothing listens on now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
