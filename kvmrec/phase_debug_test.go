package kvmrec

import (
	"context"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
)

func TestPhaseDebug(t *testing.T) {
	g := startGuest(t, synthguest.Config{RAMSize: 256 << 20, WSFraction: 0.05, DirtyFraction: 0.025, Locality: 0.25, Seed: 1, TruthDir: t.TempDir()})
	st := openStore(t, t.TempDir())
	defer st.Close()
	_, err := Record(context.Background(), st, Config{Run: "d", QMPSocket: g.cfg.QMPSocket, MemPath: g.cfg.MemPath,
		Interval: 200 * time.Millisecond, Count: 12, Logger: quietLogger(),
		OnCheckpoint: func(cs CheckpointStats) {
			acc, chg, _ := synthguest.ReadIntervalTruth(g.cfg.TruthDir, cs.Checkpoint-1, 65536)
			if acc != nil {
				t.Logf("truth acc %d chg %d", acc.GetCardinality(), chg.GetCardinality())
			}
			t.Logf("%d down %v %+v present %d scanned %d copied %d store %v", cs.Checkpoint, cs.Downtime, cs.Phases, cs.Present, cs.Scanned, cs.Copied, cs.StoreTime)
		}})
	if err != nil {
		t.Fatal(err)
	}
}
