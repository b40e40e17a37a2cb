package kvmrec

import (
	"context"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

// TestRecordIdleGuest: a guest that touches nothing gives empty working
// sets, and an empty W_i is a valid interval: every checkpoint commits
// (an empty W once panicked in the store's commit).
func TestRecordIdleGuest(t *testing.T) {
	t.Parallel()
	g := startGuest(t, synthguest.Config{RAMSize: 4 << 20, Seed: 9})
	st := openStore(t, "")
	defer st.Close()
	sum, err := Record(context.Background(), st, Config{Run: "idle", QMPSocket: g.cfg.QMPSocket, MemPath: g.cfg.MemPath,
		Interval: 30 * time.Millisecond, Count: 4, Logger: quietLogger(), PackLive: true})
	if err != nil || sum.Checkpoints != 4 {
		t.Fatalf("recording an idle guest: %+v %v", sum, err)
	}
	empty := 0
	for i := 0; i < 3; i++ {
		ws, err := st.WorkingSet("idle", i)
		if err != nil {
			t.Fatalf("W_%d: %v", i, err)
		}
		if ws.IsEmpty() {
			empty++
		}
	}
	if empty == 0 {
		t.Fatal("the idle guest's intervals all touched frames: no empty working set was recorded")
	}
	t.Logf("%d of 3 intervals had an empty working set", empty)
}
