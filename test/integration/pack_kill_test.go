package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPackKilled kills `ckptfs pack` with SIGKILL at several moments: the
// store must verify clean every time, every checkpoint must export as its
// dump, and a later `ckptfs pack` must finish the packs (which verify then
// compares with the frame versions).
func TestPackKilled(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	const frames = 16384 // 64 MiB
	dumps := writeRandomDumps(t, dir, 4, frames*4096, frames/8*4096)
	wsDir := filepath.Join(dir, "ws")
	os.Mkdir(wsDir, 0o700)
	for i := range dumps {
		// W_i: every other run of 16 frames, half of RAM.
		var list []string
		for s := i; s+16 <= frames; s += 32 {
			list = append(list, fmt.Sprintf("%d-%d", s, s+15))
		}
		os.WriteFile(filepath.Join(wsDir, fmt.Sprintf("%d.ws", i)), []byte(strings.Join(list, ",")+"\n"), 0o600)
	}
	mustCkptfs(t, store, append([]string{"import", "--no-pack", "--run", "k", "--ws-dir", wsDir}, dumps...)...)

	for _, delay := range []time.Duration{5 * time.Millisecond, 40 * time.Millisecond, 120 * time.Millisecond, 300 * time.Millisecond} {
		cmd := exec.Command(ckptfsBin, "--store", store, "pack", "k")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(delay)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		out := mustCkptfs(t, store, "verify", "k")
		t.Logf("killed after %v: %s", delay, strings.TrimSpace(out))
	}
	mustCkptfs(t, store, "pack", "k")
	out := mustCkptfs(t, store, "verify", "k")
	if !strings.Contains(out, "3 working-set packs") {
		t.Fatalf("after a full pack, verify says %q; want 3 packs", out)
	}
	checkExports(t, store, "k", dumps, len(dumps), "after the killed packs")
}
