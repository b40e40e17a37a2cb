package index

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
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
				if err := c.ReadFrame(uint64(p), buf); err != nil {
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
