package index

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

// TestEmptyWorkingSet: an idle interval (W_i = {}) is valid. It commits,
// reads back empty, packs to nothing, verifies, and its sparse export is
// all zeros; written directly and imported from an empty or a lone-newline
// .ws file.
func TestEmptyWorkingSet(t *testing.T) {
	st, err := Open(t.TempDir(), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	rng := rand.New(rand.NewPCG(5, 5))
	h := randomHistory(rng, 64, 3)
	h.ws[0] = roaring.New()
	writeHistory(t, st, "direct", h)
	checkHistory(t, st, "direct", h, rng)

	dir := t.TempDir()
	var dumps []string
	for i, img := range h.images {
		p := filepath.Join(dir, "d"+strconv.Itoa(i))
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, p)
	}
	os.WriteFile(filepath.Join(dir, "0.ws"), nil, 0o600)
	os.WriteFile(filepath.Join(dir, "1.ws"), []byte("\n"), 0o600)
	ri, err := st.Import(context.Background(), ImportSpec{Run: "imported", Dumps: dumps, WSDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if ri.Checkpoints != 3 || ri.Intervals != 2 {
		t.Fatalf("import of empty working sets: %d checkpoints, %d intervals", ri.Checkpoints, ri.Intervals)
	}
	h.ws[1] = roaring.New()
	checkHistory(t, st, "imported", h, rng)
	for _, run := range []string{"direct", "imported"} {
		ps, err := st.PackRun(context.Background(), run)
		if err != nil {
			t.Fatal(err)
		}
		if st, _ := st.IntervalStats(run, 0); st.WorkingSetFrames != 0 || st.Packed {
			t.Fatalf("%s: interval 0 has %d frames, packed %v", run, st.WorkingSetFrames, st.Packed)
		}
		if ps.Empty == 0 {
			t.Fatalf("%s: PackRun saw no empty working set: %+v", run, ps)
		}
	}
	if _, err := st.Verify(context.Background(), "", nil); err != nil {
		t.Fatal(err)
	}
	if got := FormatList(roaring.New()); got != "\n" {
		t.Fatalf("empty W_i formats as %q", got)
	}
}
