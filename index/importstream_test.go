package index

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

// TestImportStream: dumps back to back in one stream import as Import
// imports files; bad sizes and working sets are refused before anything is
// written; a stream that ends early keeps the checkpoints before it.
func TestImportStream(t *testing.T) {
	st, err := Open(t.TempDir(), Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 7))
	const frames = 64
	h := randomHistory(rng, frames, 3)
	body := bytes.Join(h.images, nil)
	spec := func(run string, body []byte) ImportStreamSpec {
		return ImportStreamSpec{Run: run, RAMSize: frames * PageSize, Count: 3, WorkingSets: h.ws, Body: bytes.NewReader(body)}
	}
	if _, err := st.ImportStream(ctx, spec("s", body)); err != nil {
		t.Fatal(err)
	}
	checkHistory(t, st, "s", h, rng)

	beyond := roaring.BitmapOf(frames)
	for _, tc := range []struct {
		spec ImportStreamSpec
		want string
	}{
		{ImportStreamSpec{Run: "s", RAMSize: PageSize, Count: 1, Body: bytes.NewReader(body)}, "run exists"},
		{ImportStreamSpec{Run: "b", RAMSize: PageSize + 1, Count: 1, Body: bytes.NewReader(body)}, "positive multiple"},
		{ImportStreamSpec{Run: "b", RAMSize: frames * PageSize, Count: 3, WorkingSets: h.ws[:1], Body: bytes.NewReader(body)}, "want 2"},
		{ImportStreamSpec{Run: "b", RAMSize: frames * PageSize, Count: 2, WorkingSets: []*roaring.Bitmap{beyond}, Body: bytes.NewReader(body)}, "beyond"},
		{ImportStreamSpec{Run: "b/c", RAMSize: PageSize, Count: 1, Body: bytes.NewReader(body)}, "bad run name"},
	} {
		if _, err := st.ImportStream(ctx, tc.spec); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.spec, err, tc.want)
		}
		if _, err := st.Run("b"); !errors.Is(err, ErrRunNotFound) {
			t.Fatalf("a refused import left run b: %v", err)
		}
	}

	// Cut in the middle of dump 2: checkpoints 0 and 1 stay.
	_, err = st.ImportStream(ctx, spec("cut", body[:len(body)-PageSize]))
	if !errors.Is(err, ErrBadInput) || !strings.Contains(err.Error(), "checkpoints 0..1") {
		t.Fatalf("cut stream: %v", err)
	}
	if ri, err := st.Run("cut"); err != nil || ri.Checkpoints != 2 {
		t.Fatalf("cut stream left %+v, %v; want checkpoints 0 and 1", ri, err)
	}
}
