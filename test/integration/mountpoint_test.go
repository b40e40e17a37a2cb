package integration

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestMountPointRefused: mount and record --mount refuse a mount point that
// holds files (the mount would hide them) or is already mounted, with one
// line, before they create the store.
func TestMountPointRefused(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()

	full := filepath.Join(dir, "full")
	os.Mkdir(full, 0o700)
	os.WriteFile(filepath.Join(full, "keep"), []byte("mine"), 0o600)
	store := filepath.Join(dir, "store-nonempty")
	code, errs := ckptfsWithin(t, 20*time.Second, store, "mount", full)
	if code == 0 || !strings.Contains(errs, "not empty") || !strings.Contains(errs, "keep") || strings.Count(errs, "\n") != 1 {
		t.Errorf("mount over a non-empty directory: exit %d, %q", code, errs)
	}
	if b, err := os.ReadFile(filepath.Join(full, "keep")); err != nil || string(b) != "mine" || isMounted(full) {
		t.Errorf("the directory's file after the refused mount: %q %v (mounted %v)", b, err, isMounted(full))
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Errorf("a refused mount created the store: %v", err)
	}

	seedStore, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	seed := filepath.Join(dir, "seed")
	os.WriteFile(seed, bytes.Repeat([]byte{1}, 4*index.PageSize), 0o600)
	mustCkptfs(t, seedStore, "import", "--run", "seed", seed)
	d := startMount(t, seedStore, mnt)
	for _, c := range []struct {
		what string
		args []string
	}{
		{"mount", []string{"mount", mnt}},
		{"record --mount", []string{"record", "--run", "r", "--qmp", filepath.Join(dir, "no.sock"), "--mem", filepath.Join(dir, "no.mem"), "--mount", mnt}},
	} {
		other := filepath.Join(dir, "store-"+strings.ReplaceAll(c.what, " ", ""))
		code, errs := ckptfsWithin(t, 20*time.Second, other, c.args...)
		if code == 0 || !strings.Contains(errs, "already a mount point") || strings.Count(errs, "\n") != 1 {
			t.Errorf("%s over a mount: exit %d, %q", c.what, code, errs)
		}
		if _, err := os.Stat(other); !os.IsNotExist(err) {
			t.Errorf("%s over a mount created the store: %v", c.what, err)
		}
	}
	if _, err := os.Stat(filepath.Join(mnt, "seed", "run.json")); err != nil {
		t.Errorf("the first mount after the refused ones: %v", err)
	}
	d.stop(t)
}

// ckptfsWithin runs the binary like ckptfs, but interrupts it (SIGINT, as
// Ctrl-C) after d: a mount that should have been refused serves instead.
func ckptfsWithin(t *testing.T, d time.Duration, store string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, ckptfsBin, append([]string{"--store", store}, args...)...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = 10 * time.Second
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Errorf("ckptfs %v still ran after %s", args, d)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), errb.String()
	} else if err != nil && ctx.Err() == nil {
		t.Fatal(err)
	}
	return 0, errb.String()
}
