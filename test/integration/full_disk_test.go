package integration

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/fulldisk"
)

// TestFullDisk imports into a store on a 48 MiB tmpfs: the import must end
// (not hang) with one clear line and exit 1, and what it committed before
// the disk filled must verify and export byte for byte.
func TestFullDisk(t *testing.T) {
	dir := t.TempDir()
	small := fulldisk.Mount(t, "48m")
	store := filepath.Join(small, "store")

	dumps := writeRandomDumps(t, dir, 5, 16<<20, 16<<20) // every dump all new
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, ckptfsBin, append([]string{"--store", store, "import", "--run", "f"}, dumps...)...)
	var errb bytes.Buffer
	cmd.Stderr = &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatal("import on a full disk hung")
	}
	msg := errb.String()
	if err == nil || cmd.ProcessState.ExitCode() != 1 || strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "no space") {
		t.Fatalf("import on a full disk: %v, stderr %q; want exit 1 and one line about space", err, msg)
	}
	t.Logf("%s", strings.TrimSpace(msg))
	// Room for verify and export to open the store again.
	code, out, errs := ckptfs(t, store, "info", "f", "--json")
	if code != 0 {
		if strings.Contains(errs, "not found") {
			t.Fatal("the disk filled before checkpoint 0: make the tmpfs larger")
		}
		t.Fatalf("info after a full disk: %s", errs)
	}
	var n int
	fmt.Sscanf(out[strings.Index(out, `"checkpoints":`)+len(`"checkpoints":`):], "%d", &n)
	if n == 0 || n >= len(dumps) {
		t.Fatalf("%d checkpoints committed; want some but not all", n)
	}
	mustCkptfs(t, store, "verify", "f")
	// Exports go to the test's own directory, not the full file system.
	checkExports(t, store, "f", dumps, n, "after the disk filled")
}
