package index

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// readLogAt checks l against want (the bytes l must hold) with reads at
// random offsets and lengths, across chunk boundaries and the end.
func readLogAt(t *testing.T, rng *rand.Rand, l *ReplayLog, want []byte) {
	t.Helper()
	if l.Size() != int64(len(want)) {
		t.Fatalf("replay log size %d, want %d", l.Size(), len(want))
	}
	all := make([]byte, len(want)+10)
	n, err := l.ReadAt(all, 0)
	if n != len(want) || (len(all) > n && err != io.EOF) || !bytes.Equal(all[:n], want) {
		t.Fatalf("whole read: %d bytes, %v; want %d bytes and EOF", n, err, len(want))
	}
	offs := []int{0, maxLogChunk - 1, maxLogChunk, len(want) - 1, len(want)}
	for range 40 {
		offs = append(offs, rng.IntN(len(want)+1))
	}
	for _, off := range offs {
		if off < 0 || off > len(want) {
			continue
		}
		for _, size := range []int{1, 7, 4096, maxLogChunk + 3, 1 + rng.IntN(3*maxLogChunk)} {
			p := make([]byte, size)
			n, err := l.ReadAt(p, int64(off))
			end := min(len(want), off+size)
			if n != end-off || !bytes.Equal(p[:n], want[off:end]) {
				t.Fatalf("ReadAt(%d bytes, %d): %d bytes, %v; want %d bytes", size, off, n, err, end-off)
			}
			if (n < size) != (err == io.EOF) || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(%d bytes, %d) of %d: %d bytes, err %v", size, off, len(want), n, err)
			}
		}
	}
	if _, err := l.ReadAt(make([]byte, 1), -1); !errors.Is(err, ErrBadInput) {
		t.Fatalf("ReadAt at -1: %v", err)
	}
}

func u64(v uint64) *uint64 { return &v }

// TestReplayLog commits checkpoints with instruction counts and replay log
// pieces of 0 bytes, a few bytes, more than a chunk and more than a batch,
// appends a tail, and reads the log back as of every commit; then damages,
// removes and checks it.
func TestReplayLog(t *testing.T) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 7))
	dir := t.TempDir()
	st, err := Open(dir, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	args := []string{"-machine", "pc", "-icount", "shift=auto,rr=record,rrfile=/tmp/x.rr"}
	w, err := st.CreateRun(RunSpec{Name: "r", RAMSize: 64 * PageSize, Recorder: "test", Tracker: "none",
		Deterministic: true, QEMUArgs: args})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.AppendReplayLog(ctx, []byte("early"), false); !errors.Is(err, ErrBadInput) {
		t.Fatalf("log before checkpoint 0: %v", err)
	}
	w.Close()
	if w, err = st.CreateRun(RunSpec{Name: "r", RAMSize: 64 * PageSize, Recorder: "test", Tracker: "none",
		Deterministic: true, QEMUArgs: args}); err != nil {
		t.Fatal(err)
	}
	piece := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.IntN(256))
		}
		return b
	}
	pieces := [][]byte{nil, piece(1000), piece(2*maxLogChunk + 12345), piece(smallCheckpoint + 3*maxLogChunk/2)}
	icounts := []uint64{0, 5000, 5000, 1 << 40}
	var want []byte
	var readers []*ReplayLog
	var sizes []int
	frame := make([]byte, PageSize)
	for i, p := range pieces {
		frame[0] = byte(i + 1)
		if i < 3 { // checkpoint 3 is its log alone: an ingest without frames
			if err := w.Put(uint64(i), frame); err != nil {
				t.Fatal(err)
			}
		}
		st0, err := w.Commit(ctx, CommitInfo{ICount: u64(icounts[i]), ReplayLog: p})
		if err != nil {
			t.Fatalf("commit %d: %v", i, err)
		}
		if st0.ICount == nil || *st0.ICount != icounts[i] {
			t.Fatalf("commit %d: stats icount %v", i, st0.ICount)
		}
		want = append(want, p...)
		l, err := st.ReplayLog("r")
		if err != nil {
			t.Fatalf("after commit %d: %v", i, err)
		}
		if l.Complete() {
			t.Fatalf("after commit %d: complete", i)
		}
		readLogAt(t, rng, l, want)
		readers = append(readers, l)
		sizes = append(sizes, len(want))
	}
	// Instruction counts never go back.
	if _, err := w.Commit(ctx, CommitInfo{ICount: u64(10)}); !errors.Is(err, ErrBadInput) {
		t.Fatalf("decreasing icount: %v", err)
	}
	w.Close()
	// The writer died on the bad commit; another run, r2, goes on with a tail.
	w2, err := st.CreateRun(RunSpec{Name: "r2", RAMSize: 4 * PageSize, Deterministic: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Commit(ctx, CommitInfo{ICount: u64(1)}); err != nil {
		t.Fatal(err)
	}
	l2, err := st.ReplayLog("r2")
	if err != nil || l2.Size() != 0 || l2.Complete() {
		t.Fatalf("deterministic run with an empty log: %v", err)
	}
	if n, err := l2.ReadAt(make([]byte, 4), 0); n != 0 || err != io.EOF {
		t.Fatalf("read of an empty log: %d, %v", n, err)
	}
	tail := piece(smallCheckpoint + 300) // the second append is ingested
	gen := st.Generation()
	if err := w2.AppendReplayLog(ctx, tail[:100], false); err != nil {
		t.Fatal(err)
	}
	if st.Generation() == gen {
		t.Fatal("an append did not change the store's generation")
	}
	if err := w2.AppendReplayLog(ctx, tail[100:], true); err != nil {
		t.Fatal(err)
	}
	if err := w2.AppendReplayLog(ctx, nil, true); err != nil {
		t.Fatalf("marking a complete log complete again: %v", err)
	}
	if l2, err = st.ReplayLog("r2"); err != nil || !l2.Complete() {
		t.Fatalf("after the tail: %v", err)
	}
	readLogAt(t, rng, l2, tail)
	if err := w2.AppendReplayLog(ctx, []byte("more"), false); !errors.Is(err, ErrBadInput) {
		t.Fatalf("append after complete: %v", err)
	}
	w2.Close()

	// Every reader still sees exactly its commit's bytes.
	for k, l := range readers {
		readLogAt(t, rng, l, want[:sizes[k]])
	}

	// Metadata and instruction counts, after a reopen.
	st.Close()
	if st, err = Open(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	defer func() { st.Close() }()
	ri, err := st.Run("r")
	if err != nil {
		t.Fatal(err)
	}
	if !ri.Deterministic || strings.Join(ri.QEMUArgs, " ") != strings.Join(args, " ") {
		t.Fatalf("run info: deterministic %v, args %q", ri.Deterministic, ri.QEMUArgs)
	}
	for i, ic := range icounts {
		cs, err := st.CheckpointStats("r", i)
		if err != nil || cs.ICount == nil || *cs.ICount != ic {
			t.Fatalf("checkpoint %d: icount %v, %v", i, cs.ICount, err)
		}
		is, err := st.IntervalStats("r", i)
		if err != nil || is.ICount == nil || *is.ICount != ic {
			t.Fatalf("interval %d: icount %v, %v", i, is.ICount, err)
		}
	}
	l, err := st.ReplayLog("r")
	if err != nil {
		t.Fatal(err)
	}
	readLogAt(t, rng, l, want)
	rep, err := st.Verify(ctx, "", nil)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if rep.ReplayLogBytes != uint64(len(want)+len(tail)) {
		t.Fatalf("verify checked %d log bytes, want %d", rep.ReplayLogBytes, len(want)+len(tail))
	}

	// A run that is not deterministic has no log; an old run's Meta
	// "qemu_args" is still its argument list.
	w3, err := st.CreateRun(RunSpec{Name: "plain", RAMSize: 4 * PageSize, Meta: map[string]string{"qemu_args": `["-m","16"]`}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w3.Commit(ctx, CommitInfo{}); err != nil {
		t.Fatal(err)
	}
	w3.Close()
	if _, err := st.ReplayLog("plain"); !errors.Is(err, ErrNoReplayLog) {
		t.Fatalf("log of a plain run: %v", err)
	}
	if ri, err := st.Run("plain"); err != nil || ri.Deterministic || strings.Join(ri.QEMUArgs, " ") != "-m 16" {
		t.Fatalf("plain run: %+v, %v", ri, err)
	}
	if cs, _ := st.CheckpointStats("plain", 0); cs.ICount != nil {
		t.Fatalf("plain run has an icount")
	}
	if _, err := st.ReplayLog("nope"); !errors.Is(err, ErrRunNotFound) {
		t.Fatalf("log of a missing run: %v", err)
	}

	// A flipped byte in a chunk: verify names the run and offset, reads of
	// that chunk fail, never return wrong bytes.
	off := uint64(1000 + maxLogChunk) // the second chunk of checkpoint 2
	key := appendLogKey(nil, ri.ID, off)
	v, closer, err := st.db.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	good := bytes.Clone(v)
	closer.Close()
	bad := bytes.Clone(good)
	bad[logHeaderLen+77] ^= 0x10
	if err := st.db.Set(key, bad, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	rep, err = st.Verify(ctx, "r", nil)
	wantMsg := `replay log of run "r" at offset 1049576: checksum mismatch`
	if err == nil || !IsCorruption(err) || !strings.Contains(strings.Join(rep.Problems, "\n"), wantMsg) {
		t.Fatalf("verify of a damaged chunk: %v, %q", err, rep.Problems)
	}
	l, _ = st.ReplayLog("r")
	if _, err := l.ReadAt(make([]byte, 10), int64(off)+70); !IsCorruption(err) {
		t.Fatalf("read of a damaged chunk: %v", err)
	}
	if l2, err = st.ReplayLog("r2"); err != nil {
		t.Fatal(err)
	}
	readLogAt(t, rng, l2, tail) // other runs are fine
	// A lost chunk is a gap.
	if err := st.db.Delete(key, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	rep, _ = st.Verify(ctx, "r", nil)
	if !strings.Contains(strings.Join(rep.Problems, "\n"), `replay log of run "r" at offset 1049576: 1048576 bytes missing`) {
		t.Fatalf("verify of a lost chunk: %q", rep.Problems)
	}
	if _, err := l.ReadAt(make([]byte, 10), int64(off)+70); !IsCorruption(err) {
		t.Fatalf("read of a lost chunk: %v", err)
	}
	if err := st.db.Set(key, good, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Verify(ctx, "r", nil); err != nil {
		t.Fatalf("verify after repair: %v", err)
	}
	// A deterministic run whose log record is lost.
	ri2, err := st.Run("r2")
	if err != nil {
		t.Fatal(err)
	}
	recKey := appendRunKey(nil, kindLog, ri2.ID)
	v, closer, err = st.db.Get(recKey)
	if err != nil {
		t.Fatal(err)
	}
	rec := bytes.Clone(v)
	closer.Close()
	if err := st.db.Delete(recKey, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	rep, _ = st.Verify(ctx, "r2", nil)
	if !strings.Contains(strings.Join(rep.Problems, "\n"), `replay log of run "r2": missing`) {
		t.Fatalf("verify of a lost log record: %q", rep.Problems)
	}
	if err := st.db.Set(recKey, rec, pebble.Sync); err != nil {
		t.Fatal(err)
	}

	// rm removes every key of the log; an open reader then says so.
	l, _ = st.ReplayLog("r")
	if err := st.DeleteRun("r"); err != nil {
		t.Fatal(err)
	}
	it, err := st.db.NewIter(&pebble.IterOptions{LowerBound: appendRunKey(nil, kindLog, ri.ID), UpperBound: runPrefixEnd(kindLog, ri.ID)})
	if err != nil {
		t.Fatal(err)
	}
	if it.First() {
		t.Fatalf("key %s left after rm", keyString(it.Key()))
	}
	it.Close()
	if _, err := l.ReadAt(make([]byte, 10), 5); !errors.Is(err, ErrRunRemoved) || !errors.Is(err, ErrRunNotFound) {
		t.Fatalf("read of a removed run's log: %v", err)
	}
	if _, err := st.ReplayLog("r"); !errors.Is(err, ErrRunNotFound) {
		t.Fatalf("log of a removed run: %v", err)
	}
}
