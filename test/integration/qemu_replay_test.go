package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// TestQEMURecordReplay records a real QEMU guest (TCG) with device state into
// a running mount and restores every checkpoint into a fresh QEMU with
// `ckptfs replay qemu`: each replay must continue the guest's tick counter
// from where its checkpoint was taken, without booting again.
func TestQEMURecordReplay(t *testing.T) {
	testenv.RequireFUSE(t)
	testenv.RequireQEMU(t)
	art, err := qemuguest.Build(qemuguest.CacheDir())
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	mem, qmp, serial := filepath.Join(dir, "ram"), filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "serial.log")
	g, err := qemuguest.Start(ctx, qemuguest.Config{Kernel: art.Kernel, Initrd: art.Initrd, MemMiB: 256,
		MemPath: mem, Share: true, QMPSocket: qmp, SerialPath: serial})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Kill()
	if _, err := qemuguest.WaitTicks(ctx, serial, 3); err != nil {
		t.Fatalf("guest did not start ticking: %v", err)
	}

	// Mount a new, empty store, then record into the running mount through
	// its socket (DESIGN.md's flow). The replays come after the recording.
	mount := startMount(t, store, mnt)
	out := mustCkptfs(t, store, "record", "--run", "vm", "--qmp", qmp, "--mem", mem,
		"--interval", "1s", "--count", "5", "--device-state")
	if !strings.Contains(out, "recorded vm: 5 checkpoints") {
		t.Fatalf("record: %q", out)
	}
	lastOriginal, err := qemuguest.LastTick(serial)
	if err != nil {
		t.Fatal(err)
	}
	g.Kill() // the replays must not lean on the original

	prevFirst := 0
	for i := 0; i < 5; i++ {
		if _, err := os.Stat(filepath.Join(mnt, "vm", fmt.Sprintf("%d.dev", i))); err != nil {
			t.Fatalf("checkpoint %d has no device state: %v", i, err)
		}
		rserial := filepath.Join(dir, fmt.Sprintf("replay%d.log", i))
		r := startDaemon(t, "replay", "qemu", "--mount", mnt, "--run", "vm", "--interval", fmt.Sprint(i), "--serial", rserial)
		deadline := time.Now().Add(60 * time.Second)
		for {
			if ticks, _ := qemuguest.Ticks(rserial); len(ticks) >= 3 {
				break
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(rserial)
				t.Fatalf("replay of checkpoint %d did not tick 3 times: %q; %s", i, log, r.stderr.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		r.stop(t)
		ticks, _ := qemuguest.Ticks(rserial)
		log, _ := os.ReadFile(rserial)
		if strings.Contains(string(log), "ckptfs-init") || len(ticks) < 3 {
			t.Fatalf("replay of checkpoint %d booted again: %q", i, log)
		}
		first := ticks[0]
		for j := 1; j < len(ticks); j++ {
			if ticks[j] != ticks[j-1]+1 {
				t.Fatalf("replay of checkpoint %d: ticks %v do not count on", i, ticks)
			}
		}
		// Checkpoints were taken a second apart, in order: each replay
		// starts later in the count than the one before, and never past
		// what the original guest reached.
		if first <= 3 || first <= prevFirst || first > lastOriginal+1 {
			t.Fatalf("replay of checkpoint %d starts at tick %d (previous replay %d, original reached %d)", i, first, prevFirst, lastOriginal)
		}
		t.Logf("checkpoint %d: replay continues at tick %d", i, first)
		prevFirst = first
	}
	mount.stop(t)
}
