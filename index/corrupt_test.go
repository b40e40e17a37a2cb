package index

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// TestCorruption flips bytes in the store's table files: verify must fail
// with a clear message, and every frame read must return either the right
// bytes or an error, never different bytes.
func TestCorruption(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	h := randomHistory(rng, 6000, 3) // ingest path: frames live in .sst files
	pristine := t.TempDir()
	st, err := Open(pristine, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	writeHistory(t, st, "r", h)
	st.Close()
	for trial := 0; trial < 4; trial++ {
		dir := t.TempDir()
		if err := os.CopyFS(dir, os.DirFS(pristine)); err != nil {
			t.Fatal(err)
		}

		tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
		if len(tables) == 0 {
			t.Fatal("no table files")
		}
		// Corrupt the largest table (frame data) in the middle.
		var target string
		var size int64
		for _, p := range tables {
			if fi, _ := os.Stat(p); fi.Size() > size {
				target, size = p, fi.Size()
			}
		}
		data, _ := os.ReadFile(target)
		for n := 0; n < 1+trial; n++ {
			off := rng.IntN(len(data) / 2)
			data[off] ^= 0x5a
		}
		if err := os.WriteFile(target, data, 0o600); err != nil {
			t.Fatal(err)
		}

		st, err = Open(dir, Options{Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			if !IsCorruption(err) {
				t.Fatalf("open of a corrupt store: %v, not a corruption error", err)
			}
			continue
		}
		_, verr := st.Verify(context.Background(), "", nil)
		if verr == nil {
			t.Fatalf("trial %d: verify passed on a corrupted store", trial)
		}
		if !IsCorruption(verr) || strings.Contains(verr.Error(), "\n") {
			t.Fatalf("trial %d: verify error is not one clear corruption line: %v", trial, verr)
		}
		t.Logf("trial %d: verify: %v", trial, verr)
		errs := 0
		buf := make([]byte, PageSize)
		for i, img := range h.images {
			c, err := st.OpenCheckpoint("r", i)
			if err != nil {
				errs++
				continue
			}
			// Every third frame: a 64 KiB block holds ~16 consecutive frames,
			// so every corrupt block is still read.
			for p := 0; p < len(img)/PageSize; p += 3 {
				if err := c.readFrame(uint64(p), buf); err != nil {
					errs++
					continue
				}
				if !bytes.Equal(buf, img[p*PageSize:(p+1)*PageSize]) {
					t.Fatalf("trial %d: checkpoint %d pfn %d read wrong bytes without an error", trial, i, p)
				}
			}
			c.Close()
		}
		if errs == 0 {
			t.Fatalf("trial %d: no read reported the corruption", trial)
		}
		st.Close()
	}
}

// TestDropCache: the block cache empties, and the calls are harmless after
// Close.
func TestDropCache(t *testing.T) {
	st, err := Open(t.TempDir(), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := st.CreateRun(RunSpec{Name: "r", RAMSize: 64 * PageSize})
	if err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, PageSize)
	for p := uint64(0); p < 64; p++ {
		frame[0], frame[1] = byte(p), 1
		if err := w.Put(p, frame); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Commit(context.Background(), CommitInfo{}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	st.Flush()
	c, err := st.OpenCheckpoint("r", 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.ReadFrames(0, make([]byte, 64*PageSize)); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if st.CacheSize() == 0 {
		t.Fatal("reading left nothing in the block cache")
	}
	st.DropCache()
	if n := st.CacheSize(); n != 0 {
		t.Fatalf("%d bytes cached after DropCache", n)
	}
	st.Close()
	st.DropCache()
	if st.CacheSize() != 0 {
		t.Fatal("CacheSize after Close")
	}
}

// countingHandler counts log records and keeps the first few.
type countingHandler struct {
	mu    *sync.Mutex
	n     *int
	lines *[]string
}

func newCountingLogger() (*slog.Logger, func() (int, []string)) {
	h := countingHandler{&sync.Mutex{}, new(int), new([]string)}
	return slog.New(h), func() (int, []string) {
		h.mu.Lock()
		defer h.mu.Unlock()
		return *h.n, append([]string(nil), *h.lines...)
	}
}

func (h countingHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelInfo }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.n++
	if len(*h.lines) < 10 {
		*h.lines = append(*h.lines, r.Message)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// TestDamagedTable: a damaged small table that holds no run's keys (here:
// the run sequence, in L0 tables that Pebble wants to compact) fails
// verify, and the open store neither spins on the compaction that keeps
// failing on it nor floods the log: one line for the damaged file.
func TestDamagedTable(t *testing.T) {
	dir := t.TempDir()
	st, err := Open(dir, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	writeHistory(t, st, "r", randomHistory(rand.New(rand.NewPCG(7, 7)), 64, 2))
	st.Close()
	// Small L0 tables, each with one key of no run, written with
	// compactions off so that they stay apart.
	db, err := pebble.Open(dir, &pebble.Options{FS: vfs.Default, DisableAutomaticCompactions: true, L0StopWritesThreshold: 100,
		FormatMajorVersion: pebble.FormatNewest, Logger: quietLogger{slog.New(slog.DiscardHandler), newHealth(slog.New(slog.DiscardHandler))}})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 12; i++ {
		db.Set(sequenceKey, []byte{0, 0, 0, byte(10 + i)}, pebble.Sync)
		db.Flush()
	}
	db.Close()
	tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
	var target string
	for _, p := range tables {
		if fi, _ := os.Stat(p); fi.Size() < 2000 {
			target = p // the newest small table
		}
	}
	if target == "" {
		t.Fatalf("no small table among %v", tables)
	}
	data, _ := os.ReadFile(target)
	data[len(data)/4] ^= 0x5a
	os.WriteFile(target, data, 0o600)

	logger, logged := newCountingLogger()
	st, err = Open(dir, Options{Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	_, verr := st.Verify(context.Background(), "", nil)
	if verr == nil || !IsCorruption(verr) || !strings.Contains(verr.Error(), filepath.Base(target)) {
		t.Fatalf("verify over a damaged table: %v", verr)
	}
	t.Logf("verify: %v", verr)
	time.Sleep(3 * time.Second)
	n, lines := logged()
	if n > 3 {
		t.Fatalf("%d log lines in 3 s from one damaged table: %q", n, lines)
	}
	t.Logf("%d log lines: %q", n, lines)
}
