package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"log/slog"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/zeebo/xxh3"
)

// TestPack builds the working-set packs of a run and checks that reads
// served from them equal the model, that ranges reaching outside W_i are
// still right, that a damaged pack costs a log line and never wrong bytes,
// that verify finds the damage, and that rm removes packs with the run.
func TestPack(t *testing.T) {
	var logBuf bytes.Buffer
	st, h := storeWithRun(t, 5, 4, slog.New(slog.NewTextHandler(&logBuf, &slog.HandlerOptions{Level: slog.LevelWarn})))
	ps, err := st.PackRun(context.Background(), "r")
	if err != nil {
		t.Fatal(err)
	}
	if ps.Intervals+ps.Present != 3 {
		t.Fatalf("packs built %d, present %d; want 3 intervals", ps.Intervals, ps.Present)
	}
	if again, err := st.PackRun(context.Background(), "r"); err != nil || again.Intervals != 0 || again.Present != 3 {
		t.Fatalf("second PackRun: %+v, %v; want nothing built", again, err)
	}
	for i := 0; i < 3; i++ {
		if ok, err := st.HasPack("r", i); err != nil || !ok {
			t.Fatalf("interval %d: HasPack %v, %v", i, ok, err)
		}
		is, err := st.IntervalStats("r", i)
		if err != nil || !is.Packed {
			t.Fatalf("interval %d: stats %+v, %v: not packed", i, is, err)
		}
	}
	// Checkpoint 3 has no working set, so no pack.
	if ok, _ := st.HasPack("r", 3); ok {
		t.Fatal("the last checkpoint has a pack without a working set")
	}

	c, err := st.OpenCheckpoint("r", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	img := h.images[1]
	check := func(first, n uint64, wantPacked bool) {
		t.Helper()
		dst := make([]byte, n*PageSize)
		ok, err := c.readPacked(first, dst)
		if err != nil || ok != wantPacked {
			t.Fatalf("readPacked(%d, %d frames) = %v, %v; want %v", first, n, ok, err, wantPacked)
		}
		clear(dst)
		if err := c.ReadFrames(first, dst); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(dst, img[first*PageSize:(first+n)*PageSize]) {
			t.Fatalf("ReadFrames(%d, %d frames) differs from the image", first, n)
		}
	}
	check(100, 600, true) // all of W's leading run: five chunks
	check(127, 130, true) // across a chunk boundary
	check(1000, 1, true)  // a run of one frame
	check(2990, 10, true) // the last, short chunk
	check(690, 20, false) // leaves W: served by the versions
	check(50, 100, false) // starts outside W

	// Damage one frame of chunk 2: reads fall back to the versions, and
	// verify reports the pack.
	key := appendPackKey(nil, c.run.ID, 1, 2)
	v, closer, err := st.db.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(v)
	closer.Close()
	bad[packFrames*checksumLen+5] ^= 0xff
	if err := st.db.Set(key, bad, nil); err != nil {
		t.Fatal(err)
	}
	// Iterators are snapshots: a fresh handle sees the damage.
	c.Close()
	if c, err = st.OpenCheckpoint("r", 1); err != nil {
		t.Fatal(err)
	}
	dst := make([]byte, 600*PageSize)
	if ok, err := c.readPacked(100, dst); ok || err == nil || !IsCorruption(err) {
		t.Fatalf("damaged pack: readPacked %v, %v; want a corruption error", ok, err)
	}
	logBuf.Reset()
	for range 3 {
		clear(dst)
		if err := c.ReadFrames(100, dst); err != nil || !bytes.Equal(dst, img[100*PageSize:700*PageSize]) {
			t.Fatalf("damaged pack: ReadFrames %v or wrong bytes", err)
		}
	}
	if n := strings.Count(logBuf.String(), "pack unreadable"); n != 1 {
		t.Fatalf("damaged pack: %d log lines over three reads, want one:\n%s", n, logBuf.String())
	}
	rep, err := st.Verify(context.Background(), "r", nil)
	if err == nil || !strings.Contains(strings.Join(rep.Problems, "\n"), "pack") {
		t.Fatalf("verify of a damaged pack: %v, %q", err, rep.Problems)
	}
	// A pack whose frames are checksummed right but differ from the
	// versions (a wrong build) is found too.
	binary.LittleEndian.PutUint64(bad[2*checksumLen:], 0)
	f := bad[packFrames*checksumLen:]
	f[2*PageSize] ^= 1
	binary.LittleEndian.PutUint64(bad[2*checksumLen:], xxh3.Hash(f[2*PageSize:3*PageSize]))
	f[5] ^= 0xff // undo the first damage
	if err := st.db.Set(key, bad, nil); err != nil {
		t.Fatal(err)
	}
	rep, err = st.Verify(context.Background(), "r", nil)
	if err == nil || !strings.Contains(strings.Join(rep.Problems, "\n"), "differs from the frame versions") {
		t.Fatalf("verify of a wrong pack: %v, %q", err, rep.Problems)
	}

	c.Close()
	// A run being packed is not removed: its pack would outlive it.
	st.startPacking("r")
	if err := st.DeleteRun("r"); err == nil || !strings.Contains(err.Error(), "being packed") {
		t.Fatalf("rm during packing: %v", err)
	}
	st.endPacking("r")
	if err := st.DeleteRun("r"); err != nil {
		t.Fatal(err)
	}
	n := 0
	_ = st.scanKeys(kindPack, c.run.ID, c.run.Name, func(k, v []byte) { n++ })
	if n != 0 {
		t.Fatalf("%d pack keys left after rm", n)
	}
}

// storeWithRun writes run "r" of 3000 frames and the given checkpoints into
// a new store, with W_1 in long runs that cross pack chunk boundaries
// (100-699, 1000, 2990-2999) and every other W random.
func storeWithRun(t *testing.T, seed uint64, checkpoints int, log *slog.Logger) (*Store, history) {
	t.Helper()
	h := randomHistory(rand.New(rand.NewPCG(seed, seed)), 3000, checkpoints)
	h.ws[1].Clear()
	h.ws[1].AddRange(100, 700)
	h.ws[1].AddRange(1000, 1001)
	h.ws[1].AddRange(2990, 3000)
	st, err := Open(t.TempDir(), Options{Create: true, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	writeHistory(t, st, "r", h)
	return st, h
}
