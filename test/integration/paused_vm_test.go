package integration

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestRecordWarnsPausedVM: a VM left paused (as a recorder killed during a
// pause leaves it) is resumed by the next recording, with one warning on
// the stderr of the user who records, also when the recording runs in the
// process of a mount that owns the store.
func TestRecordWarnsPausedVM(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	mem, sock := filepath.Join(dir, "ram"), filepath.Join(dir, "qmp.sock")
	startDaemon(t, "synth-guest", "-mem", mem, "-ram-size", "16M", "-qmp", sock, "-ws", "0.1", "-dirty", "0.03")
	waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }, "synthetic guest")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	status := func() string {
		c, err := qmp.Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		st, err := c.QueryStatus(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Status
	}
	pause := func() {
		c, err := qmp.Dial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Execute(ctx, "stop", nil, nil); err != nil {
			t.Fatal(err)
		}
	}
	const warning = "the VM was found paused"
	record := func(run string) string {
		code, _, errs := ckptfs(t, store, "record", "--run", run, "--qmp", sock, "--mem", mem, "--interval", "100ms", "--count", "2", "--no-pack")
		if code != 0 {
			t.Fatalf("record %s: exit %d: %s", run, code, errs)
		}
		return errs
	}

	// The recorder owns the store.
	if errs := record("running"); strings.Contains(errs, warning) {
		t.Errorf("recording a running VM warns:\n%s", errs)
	}
	pause()
	if errs := record("direct"); strings.Count(errs, warning) != 1 || status() != "running" {
		t.Errorf("recording a paused VM: want one warning and a running VM (%s):\n%s", status(), errs)
	}

	// A mount owns the store: the recording runs in its process.
	m := startMount(t, store, mnt)
	pause()
	if errs := record("forwarded"); strings.Count(errs, warning) != 1 || status() != "running" {
		t.Errorf("recording a paused VM through the mount: want one warning on the recorder's stderr and a running VM (%s):\n%s", status(), errs)
	}
	if strings.Contains(m.stderr.String(), warning) {
		t.Errorf("the warning went to the mount's log:\n%s", m.stderr.String())
	}
	m.stop(t)
}
