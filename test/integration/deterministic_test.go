package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/replay/replaytest"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// intervalReport is the part of `replay interval --json` the tests read.
type intervalReport struct {
	Verdict         string `json:"verdict"`
	TargetICount    uint64 `json:"target_icount"`
	ReachedICount   uint64 `json:"reached_icount"`
	FramesVerified  uint64 `json:"frames_verified"`
	DifferingFrames uint64 `json:"differing_frames"`
	Misses          uint64 `json:"misses"`
	MissFrames      uint64 `json:"miss_frames"`
	VerifyHoleReads uint64 `json:"verify_hole_reads"`
	Touched         *struct {
		Frames    uint64   `json:"frames"`
		WSFrames  uint64   `json:"ws_frames"`
		InWS      uint64   `json:"in_ws"`
		OutsideWS *uint64  `json:"outside_ws"`
		Precision float64  `json:"precision"`
		First     []uint64 `json:"first_outside"`
	} `json:"touched"`
}

// TestDeterministicRecordReplay records the QEMU test guest in record mode
// through a running mount (checkpoints during boot included) and replays
// interval 1 while the recording still runs, as soon as checkpoint 2 is
// committed. It checks what the run holds (instruction counts, device
// state, the replay log, the recorded arguments), replays every interval
// from <i>.ram (verified, no miss), then one interval again from its full
// checkpoint and from <i>.ram with --precision: each must arrive at the
// next checkpoint's instruction count with every frame of W_i equal to it,
// no hole read and nothing touched outside W_i. A replay whose QEMU is
// killed, a copy of <i>.ram with one frame of W_i taken out, a replay log
// cut short and bad arguments each end in one error line, and the store
// still verifies.
func TestDeterministicRecordReplay(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.RequireQEMU(t)
	art, err := qemuguest.Build(qemuguest.CacheDir())
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	startMount(t, store, mnt)
	const count = 5 // checkpoint 0 falls in the boot
	rec := startDaemon(t, "--store", store, "record", "--run", "det", "--deterministic", "--interval", "1s",
		"--count", fmt.Sprint(count), "--no-pack", "--",
		"-machine", "pc,accel=tcg", "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none",
		"-no-reboot", "-kernel", art.Kernel, "-initrd", art.Initrd,
		"-append", qemuguest.DefaultAppend, "-serial", "file:"+filepath.Join(dir, "serial.log"))
	run := filepath.Join(mnt, "det")

	// An interval of a recording in progress replays as soon as its end is
	// committed: the recorder stores the log up to that checkpoint first.
	waitFor(t, time.Minute, func() bool {
		_, err := os.Stat(filepath.Join(run, "2.json"))
		return err == nil
	}, "checkpoint 2 of det: "+rec.stderr.String())
	select {
	case <-rec.done:
		t.Fatalf("the recording ended before checkpoint 2 was seen: %s", rec.stderr.String())
	default:
	}
	if code, stdout, stderr := ckptfs(t, store, "replay", "interval", "--mount", mnt, "--run", "det", "--interval", "1",
		"--deadline", "3m"); code != 0 || !strings.Contains(stdout, "verified") {
		t.Fatalf("replay interval 1 while recording: exit %d: %s%s", code, stdout, stderr)
	}
	select {
	case <-rec.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("record did not end: %s", rec.stderr.String())
	}
	if code := rec.cmd.ProcessState.ExitCode(); code != 0 || !strings.Contains(rec.stderr.String(), fmt.Sprintf("recorded det: %d checkpoints", count)) {
		t.Fatalf("record: exit %d: %s", code, rec.stderr.String())
	}

	var info struct {
		Deterministic bool     `json:"deterministic"`
		QEMUArgs      []string `json:"qemu_args"`
	}
	readJSON(t, filepath.Join(run, "run.json"), &info)
	if !info.Deterministic || !strings.Contains(strings.Join(info.QEMUArgs, " "), "rr=record") {
		t.Fatalf("run.json: deterministic %v, qemu_args %q", info.Deterministic, info.QEMUArgs)
	}
	prev := uint64(0)
	for i := 0; i < count; i++ {
		var st struct {
			ICount *uint64 `json:"icount"`
		}
		readJSON(t, filepath.Join(run, fmt.Sprintf("%d.json", i)), &st)
		if st.ICount == nil || (i > 0 && *st.ICount <= prev) {
			t.Fatalf("checkpoint %d: icount %v after %d", i, st.ICount, prev)
		}
		prev = *st.ICount
		if fi, err := os.Stat(filepath.Join(run, fmt.Sprintf("%d.dev", i))); err != nil || fi.Size() == 0 {
			t.Fatalf("checkpoint %d has no device state: %v", i, err)
		}
	}
	log, err := os.ReadFile(filepath.Join(run, "replay.log"))
	if err != nil || len(log) <= 12 || bytes.Equal(log[:4], make([]byte, 4)) {
		t.Fatalf("replay.log: %d bytes, err %v (want a header QEMU wrote and events)", len(log), err)
	}
	if out := mustCkptfs(t, store, "verify", "det"); !strings.Contains(out, "ok") {
		t.Errorf("verify det: %q", out)
	}

	// Every interval from <i>.ram, one at a time: each must reach the next
	// checkpoint with W_i equal to it and no working-set miss.
	runJSON := filepath.Join(dir, "run.json")
	code, stdout, stderr := ckptfs(t, store, "replay", "run", "--mount", mnt, "--run", "det", "--jobs", "1",
		"--deadline", "3m", "--json", runJSON)
	var rr struct {
		Sparse struct {
			Intervals []struct {
				intervalReport
				Interval int `json:"interval"`
			} `json:"intervals"`
		} `json:"sparse"`
		AllVerified bool `json:"all_verified"`
	}
	readJSON(t, runJSON, &rr)
	t.Logf("replay run: exit %d\n%s", code, stdout)
	if code != 0 || !rr.AllVerified || len(rr.Sparse.Intervals) != count-1 {
		t.Errorf("replay run from <i>.ram: exit %d, all verified %v, %d intervals (want %d): %s",
			code, rr.AllVerified, len(rr.Sparse.Intervals), count-1, stderr)
	}
	for _, r := range rr.Sparse.Intervals {
		if r.Verdict != "verified" || r.DifferingFrames != 0 || r.Misses != 0 || r.FramesVerified == 0 ||
			r.ReachedICount != r.TargetICount {
			t.Errorf("interval %d from <i>.ram: %+v", r.Interval, r.intervalReport)
		}
	}

	// The last interval from full/<i>.ram, then from <i>.ram.
	last := count - 2
	for _, full := range []bool{true, false} {
		deadline := "4m"
		if !full {
			deadline = "60s" // a replay that left W_i spins until then
		}
		args := []string{"replay", "interval", "--mount", mnt, "--run", "det", "--interval", fmt.Sprint(last),
			"--deadline", deadline, "--precision", "--json", filepath.Join(dir, "r.json")}
		if full {
			args = append(args, "--full")
		}
		code, stdout, stderr := ckptfs(t, store, args...)
		var r intervalReport
		readJSON(t, filepath.Join(dir, "r.json"), &r)
		t.Logf("interval %d full=%v: exit %d, %+v\n%s", last, full, code, r, stdout)
		// --precision: the frames the replay touched against W_i.
		tr := r.Touched
		if tr == nil || tr.OutsideWS == nil || (tr.WSFrames != r.FramesVerified && r.FramesVerified > 0) ||
			tr.Precision <= 0 || tr.Precision > 1 || tr.InWS > tr.WSFrames || tr.Frames != tr.InWS+*tr.OutsideWS {
			t.Fatalf("interval %d full=%v: touched report %+v (want precision in (0,1] and touched outside W_i reported)", last, full, tr)
		}
		t.Logf("interval %d full=%v: precision ≥ %.3f, %d frames touched outside W_i %v", last, full, tr.Precision, *tr.OutsideWS, tr.First)
		verified := r.ReachedICount == r.TargetICount && r.DifferingFrames == 0 && r.FramesVerified > 0 && r.Misses == 0 &&
			*tr.OutsideWS == 0
		if (code == 0) != verified || (code == 0) != (r.Verdict == "verified") {
			t.Errorf("interval %d full=%v: exit %d, verdict %s, reached %d of %d, %d of %d frames differ, %d misses",
				last, full, code, r.Verdict, r.ReachedICount, r.TargetICount, r.DifferingFrames, r.FramesVerified, r.Misses)
		}
		if code != 0 && len(strings.Split(strings.TrimSpace(stderr), "\n")) != 1 {
			t.Errorf("interval %d full=%v: want one error line, got %q", last, full, stderr)
		}
		// Either way the replay must be verified: re-executed exactly,
		// nothing touched outside W_i, and (from <i>.ram) no hole read
		// before the STOP; holes the verifier reads after it are reported
		// apart and logged here.
		if !verified {
			t.Errorf("interval %d full=%v not verified: %s", last, full, stderr)
		}
		if r.VerifyHoleReads > 0 {
			t.Logf("interval %d full=%v: %d holes read by the verification", last, full, r.VerifyHoleReads)
		}
	}
	checkQEMUKilled(t, store, mnt, last)

	// A W_i with a frame taken out is caught, and a log cut where the
	// interval ends is refused before QEMU starts.
	checks := replaytest.IntervalChecks{ShortDeadline: time.Minute}
	replaytest.CheckTampered(t, mnt, "det", last, checks)
	replaytest.CheckTruncatedLog(t, mnt, "det", last, checks)

	// Refusals: one line each, non-zero, nothing changed.
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--interval", fmt.Sprint(count - 1)}, "checkpoint"},
		{[]string{"--interval", "0", "--plugin", filepath.Join(dir, "missing.so")}, "missing.so"},
	} {
		args := append([]string{"replay", "interval", "--mount", mnt, "--run", "det"}, c.args...)
		code, _, stderr := ckptfs(t, store, args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if code == 0 || len(lines) != 1 || !strings.Contains(stderr, c.want) {
			t.Errorf("%v: exit %d, stderr %q; want one line about %q", c.args, code, stderr, c.want)
		}
	}
	if out := mustCkptfs(t, store, "verify", "det"); !strings.Contains(out, "ok") {
		t.Errorf("verify det after the replays: %q", out)
	}
}

func readJSON(t testing.TB, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// checkQEMUKilled kills the QEMU of a replay of interval i while it runs:
// the replay must end with one line saying so and a non-zero exit, and the
// store must still verify.
func checkQEMUKilled(t *testing.T, store, mnt string, i int) {
	t.Helper()
	cmd := exec.Command(ckptfsBin, "--store", store, "replay", "interval", "--mount", mnt, "--run", "det",
		"--interval", fmt.Sprint(i), "--full", "--deadline", "2m")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	killed := false
	deadline := time.Now().Add(time.Minute)
	for !killed && time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("the replay ended (%v) before its QEMU could be killed: %s", err, stderr.String())
		default:
		}
		if pid := childQEMU(cmd.Process.Pid); pid > 0 {
			killed = syscall.Kill(pid, syscall.SIGKILL) == nil
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !killed {
		t.Fatal("no replaying QEMU found to kill")
	}
	err := <-done
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	if err == nil || len(lines) != 1 || !strings.Contains(lines[0], "QEMU") {
		t.Errorf("replay with its QEMU killed: %v, stderr %q; want a non-zero exit and one line about QEMU", err, stderr.String())
	}
	t.Logf("replay with its QEMU killed: %v: %s", err, lines[0])
	if out := mustCkptfs(t, store, "verify", "det"); !strings.Contains(out, "ok") {
		t.Errorf("verify det after a killed replay: %q", out)
	}
}

// childQEMU returns the pid of a QEMU that is a child of ppid, or 0.
func childQEMU(ppid int) int {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", ppid))
	for _, task := range tasks {
		kids, _ := os.ReadFile(task)
		for _, kid := range strings.Fields(string(kids)) {
			comm, _ := os.ReadFile("/proc/" + kid + "/comm")
			if strings.HasPrefix(string(comm), "qemu-system") {
				pid, _ := strconv.Atoi(kid)
				return pid
			}
		}
	}
	return 0
}
