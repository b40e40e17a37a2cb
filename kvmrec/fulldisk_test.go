package kvmrec

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/fulldisk"
	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

// TestRecordFullDisk records into a store on a small tmpfs until the disk
// fills: Record must stop with an error that says so, leave the VM
// running, and every checkpoint it committed must hold the guest's RAM of
// that pause.
func TestRecordFullDisk(t *testing.T) {
	small := fulldisk.Mount(t, "40m")

	gcfg := synthguest.Config{RAMSize: 32 << 20, WSFraction: 0.5, DirtyFraction: 0.5, Locality: 1, Seed: 9, TruthDir: t.TempDir()}
	g := startGuest(t, gcfg)
	st := openStore(t, filepath.Join(small, "store"))
	defer st.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sum, err := Record(ctx, st, Config{Run: "r", QMPSocket: g.cfg.QMPSocket, MemPath: g.cfg.MemPath,
		Interval: 60 * time.Millisecond, Count: 40, Tracker: TrackerPagemap, Logger: quietLogger()})
	if ctx.Err() != nil {
		t.Fatal("the recording hung on a full disk")
	}
	if err == nil || !errors.Is(err, syscall.ENOSPC) && !strings.Contains(err.Error(), "no space") {
		t.Fatalf("Record on a full disk: %v (%d checkpoints); want an error about space", err, sum.Checkpoints)
	}
	t.Logf("stopped after %d checkpoints: %v", sum.Checkpoints, err)
	if sum.Checkpoints == 0 {
		t.Fatal("the disk filled before checkpoint 0: make the tmpfs larger")
	}
	if s := g.status(t); s != "running" {
		t.Errorf("guest is %q after the failed recording, want running", s)
	}
	if n := checkImages(t, st, "r", gcfg.TruthDir); n != sum.Checkpoints {
		t.Errorf("%d checkpoints checked, %d committed", n, sum.Checkpoints)
	}
}
