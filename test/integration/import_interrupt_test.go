package integration

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestImportCtrlC interrupts `ckptfs import` with SIGINT: it must end with one
// line and exit 1, and every checkpoint it reports committed must export
// byte-identical to its dump; nothing else may be visible.
func TestImportCtrlC(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	dumps := writeRandomDumps(t, dir, 8, 32<<20, 4<<20)
	for _, delay := range []time.Duration{150 * time.Millisecond, 400 * time.Millisecond} {
		run := fmt.Sprintf("r%d", delay.Milliseconds())
		cmd := exec.Command(ckptfsBin, append([]string{"--store", store, "import", "--run", run}, dumps...)...)
		var errb bytes.Buffer
		cmd.Stderr = &errb
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		// The delay counts from when ckptfs handles SIGINT: on a loaded
		// machine 150ms may pass before its main runs, and the signal
		// would then kill it the default way.
		waitCatches(t, cmd.Process.Pid, syscall.SIGINT)
		time.Sleep(delay)
		cmd.Process.Signal(os.Interrupt)
		err := cmd.Wait()
		code := cmd.ProcessState.ExitCode()
		switch {
		case err == nil:
			t.Logf("delay %v: the import finished before the interrupt", delay)
		case code != 1 || strings.Count(errb.String(), "\n") != 1 || !strings.Contains(errb.String(), "interrupted"):
			t.Fatalf("delay %v: exit %d, stderr %q", delay, code, errb.String())
		default:
			t.Logf("delay %v: %s", delay, strings.TrimSpace(errb.String()))
		}
		code, out, errs := ckptfs(t, store, "info", run, "--json")
		if code != 0 {
			if strings.Contains(errs, "not found") {
				continue // interrupted before checkpoint 0: nothing visible
			}
			t.Fatalf("info: %s", errs)
		}
		var n int
		fmt.Sscanf(out[strings.Index(out, `"checkpoints":`)+len(`"checkpoints":`):], "%d", &n)
		checkExports(t, store, run, dumps, n, "of an interrupted import")
	}
	if out := mustCkptfs(t, store, "verify"); !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify: %q", out)
	}
}

// waitCatches waits until process pid has a handler for sig (its SigCgt
// mask in /proc/PID/status), for up to a minute.
func waitCatches(t *testing.T, pid int, sig syscall.Signal) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			t.Fatalf("process %d: %v", pid, err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if mask, ok := strings.CutPrefix(line, "SigCgt:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(mask), 16, 64); err == nil && m&(1<<(sig-1)) != 0 {
					return
				}
			}
		}
	}
	t.Fatalf("process %d does not catch %v after a minute", pid, sig)
}
