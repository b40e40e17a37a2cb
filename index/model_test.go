package index

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

// history is the in-memory model of a run: full images and working sets.
type history struct {
	images [][]byte
	ws     []*roaring.Bitmap // ws[i] = W_i, for i < len(images)-1
}

// randomHistory makes checkpoints with changed, repeated and zeroed frames.
func randomHistory(rng *rand.Rand, frames, checkpoints int) history {
	var h history
	img := make([]byte, frames*PageSize)
	pool := make([][]byte, 8) // repeated contents exercise dedup
	for i := range pool {
		pool[i] = make([]byte, PageSize)
		for j := range pool[i] {
			pool[i][j] = byte(rng.IntN(256))
		}
	}
	for c := 0; c < checkpoints; c++ {
		changes := frames
		if c > 0 {
			changes = rng.IntN(frames/2 + 1)
		}
		for n := 0; n < changes; n++ {
			p := rng.IntN(frames)
			if c == 0 {
				p = n
			}
			frame := img[p*PageSize : (p+1)*PageSize]
			switch rng.IntN(4) {
			case 0:
				clear(frame)
			case 1:
				copy(frame, pool[rng.IntN(len(pool))])
			default:
				for j := 0; j < PageSize; j += 8 {
					frame[j] = byte(rng.IntN(256))
				}
				frame[rng.IntN(PageSize)]++
			}
		}
		h.images = append(h.images, bytes.Clone(img))
		if c > 0 {
			ws := roaring.New()
			for n := rng.IntN(frames); n > 0; n-- {
				ws.Add(uint32(rng.IntN(frames)))
			}
			h.ws = append(h.ws, ws)
		}
	}
	return h
}

func writeHistory(t testing.TB, st *Store, name string, h history) {
	t.Helper()
	w, err := st.CreateRun(RunSpec{Name: name, RAMSize: uint64(len(h.images[0])), Recorder: "test", Tracker: "import"})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for i, img := range h.images {
		for p := 0; p < len(img)/PageSize; p++ {
			if err := w.Put(uint64(p), img[p*PageSize:(p+1)*PageSize]); err != nil {
				t.Fatal(err)
			}
		}
		info := CommitInfo{}
		if i > 0 {
			info.WorkingSet = h.ws[i-1]
		}
		if _, err := w.Commit(context.Background(), info); err != nil {
			t.Fatal(err)
		}
	}
}

func checkHistory(t *testing.T, st *Store, name string, h history, rng *rand.Rand) {
	t.Helper()
	ri, err := st.Run(name)
	if err != nil {
		t.Fatal(err)
	}
	if ri.Checkpoints != len(h.images) || ri.Intervals != len(h.ws) {
		t.Fatalf("run %s: %d checkpoints, %d intervals; want %d, %d", name, ri.Checkpoints, ri.Intervals, len(h.images), len(h.ws))
	}
	frames := len(h.images[0]) / PageSize
	buf := make([]byte, PageSize)
	for i, img := range h.images {
		c, err := st.OpenCheckpoint(name, i)
		if err != nil {
			t.Fatal(err)
		}
		// Point reads, before the map is built.
		for p := 0; p < frames; p++ {
			if err := c.readFrame(uint64(p), buf); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf, img[p*PageSize:(p+1)*PageSize]) {
				t.Fatalf("checkpoint %d pfn %d: ReadFrame differs from the model", i, p)
			}
		}
		// Range reads through the map.
		for n := 0; n < 5; n++ {
			a := rng.IntN(frames)
			b := a + 1 + rng.IntN(frames-a)
			got := make([]byte, (b-a)*PageSize)
			if err := c.ReadFrames(uint64(a), got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, img[a*PageSize:b*PageSize]) {
				t.Fatalf("checkpoint %d frames %d..%d: ReadFrames differs from the model", i, a, b)
			}
		}
		data, err := c.DataFrames()
		if err != nil {
			t.Fatal(err)
		}
		for p := 0; p < frames; p++ {
			nonZero := !bytes.Equal(img[p*PageSize:(p+1)*PageSize], zeroFrame)
			if data.Contains(uint32(p)) != nonZero {
				t.Fatalf("checkpoint %d pfn %d: data=%v, non-zero=%v", i, p, data.Contains(uint32(p)), nonZero)
			}
		}
		c.Close()
		out := filepath.Join(t.TempDir(), "export")
		if err := st.Export(context.Background(), ExportSpec{Run: name, Interval: i, Out: out}); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(out)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, img) {
			t.Fatalf("checkpoint %d: export differs from the model", i)
		}
		if i < len(h.ws) {
			ws, err := st.WorkingSet(name, i)
			if err != nil {
				t.Fatal(err)
			}
			if !ws.Equals(h.ws[i]) {
				t.Fatalf("W_%d differs from the model", i)
			}
			if err := st.Export(context.Background(), ExportSpec{Run: name, Interval: i, Out: out, Sparse: true}); err != nil {
				t.Fatal(err)
			}
			got, _ := os.ReadFile(out)
			for p := 0; p < frames; p++ {
				want := zeroFrame
				if ws.Contains(uint32(p)) {
					want = img[p*PageSize : (p+1)*PageSize]
				}
				if !bytes.Equal(got[p*PageSize:(p+1)*PageSize], want) {
					t.Fatalf("checkpoint %d pfn %d: sparse export differs from the model", i, p)
				}
			}
		}
	}
	if _, err := st.WorkingSet(name, len(h.ws)); err == nil {
		t.Fatalf("W_%d exists but the last checkpoint's interval has not ended", len(h.ws))
	}
}

func TestModel(t *testing.T) {
	for _, onDisk := range []bool{false, true} {
		t.Run(fmt.Sprintf("disk=%v", onDisk), func(t *testing.T) {
			dir := t.TempDir()
			open := func() *Store {
				st, err := Open(dir, Options{Create: true, InMemory: !onDisk})
				if err != nil {
					t.Fatal(err)
				}
				return st
			}
			st := open()
			rng := rand.New(rand.NewPCG(1, uint64(len(dir))))
			var hs []history
			for r := 0; r < 6; r++ {
				frames := 16 + rng.IntN(200)
				if r == 5 {
					frames = 3000 // > smallCheckpoint: the ingest path
				}
				h := randomHistory(rng, frames, 1+rng.IntN(6))
				writeHistory(t, st, fmt.Sprintf("run-%d", r), h)
				hs = append(hs, h)
			}
			for r, h := range hs {
				checkHistory(t, st, fmt.Sprintf("run-%d", r), h, rng)
			}
			if rep, err := st.Verify(context.Background(), "", nil); err != nil {
				t.Fatalf("verify: %v (%+v)", err, rep)
			}
			if onDisk {
				st.Close()
				st = open()
				for r, h := range hs {
					checkHistory(t, st, fmt.Sprintf("run-%d", r), h, rng)
				}
			}
			if err := st.DeleteRun("run-2"); err != nil {
				t.Fatal(err)
			}
			if _, err := st.Run("run-2"); err == nil {
				t.Fatal("run-2 still there after DeleteRun")
			}
			checkHistory(t, st, "run-3", hs[3], rng)
			if _, err := st.Verify(context.Background(), "", nil); err != nil {
				t.Fatal(err)
			}
			st.Close()
		})
	}
}

func TestRunErrors(t *testing.T) {
	st, err := Open("", Options{InMemory: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, bad := range []string{"", "-x", "a/b", "..", string(make([]byte, 65))} {
		if _, err := st.CreateRun(RunSpec{Name: bad, RAMSize: PageSize}); err == nil {
			t.Errorf("run name %q accepted", bad)
		}
	}
	if _, err := st.CreateRun(RunSpec{Name: "r", RAMSize: 100}); err == nil {
		t.Error("RAM size 100 accepted")
	}
	h := randomHistory(rand.New(rand.NewPCG(2, 2)), 8, 2)
	writeHistory(t, st, "r", h)
	if _, err := st.CreateRun(RunSpec{Name: "r", RAMSize: PageSize}); err == nil {
		t.Error("existing run accepted")
	}
	if _, err := st.OpenCheckpoint("r", 2); err == nil {
		t.Error("uncommitted checkpoint opened")
	}
	w, _ := st.CreateRun(RunSpec{Name: "s", RAMSize: 4 * PageSize})
	if err := w.Put(2, zeroFrame); err != nil {
		t.Fatal(err)
	}
	if err := w.Put(1, zeroFrame); err == nil {
		t.Error("out-of-order Put accepted")
	}
	w.Close()
	if _, err := st.Run("s"); err == nil {
		t.Error("run without checkpoint 0 is visible")
	}
}

func TestOpenMissingAndBusy(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	if _, err := Open(dir, Options{}); err == nil {
		t.Fatal("opening a missing store succeeded")
	}
	st, err := Open(dir, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := Open(dir, Options{}); err == nil || !isBusy(err) {
		t.Fatalf("second open: %v, want ErrStoreBusy", err)
	}
}

func isBusy(err error) bool {
	return err != nil && bytes.Contains([]byte(err.Error()), []byte("in use"))
}

// TestReadAfterClose: a checkpoint read after its Close still gives the
// right bytes and leaves no iterator behind, so the store closes cleanly.
func TestReadAfterClose(t *testing.T) {
	st, err := Open(t.TempDir(), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	h := randomHistory(rand.New(rand.NewPCG(4, 4)), 64, 2)
	writeHistory(t, st, "r", h)
	c, err := st.OpenCheckpoint("r", 1)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	buf := make([]byte, 4*PageSize)
	if err := c.ReadFrames(8, buf); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf, h.images[1][8*PageSize:12*PageSize]) {
		t.Fatal("read after Close gave wrong bytes")
	}
	if err := c.readFrame(3, buf); err != nil {
		t.Fatal(err)
	}
	if err := st.Close(); err != nil {
		t.Fatalf("store close after reads on a closed checkpoint: %v", err)
	}
}
