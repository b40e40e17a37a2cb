package index

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/RoaringBitmap/roaring/v2"
)

// TestWorkingSetReads: the sparse view of a checkpoint (ReadWorkingSet) and
// W_i in pieces (WorkingSetPieces, ReadPiece) give the frames of the image
// inside W_i and zeros elsewhere, with and without a pack and with a
// damaged pack; pieces cover W_i exactly once and end where pack chunks
// end.
func TestWorkingSetReads(t *testing.T) {
	st, h := storeWithRun(t, 9, 3, nil)
	ws := h.ws[1]
	sparse := make([]byte, len(h.images[1]))
	it := ws.Iterator()
	for it.HasNext() {
		p := int(it.Next())
		copy(sparse[p*PageSize:(p+1)*PageSize], h.images[1][p*PageSize:])
	}
	check := func(what string) {
		t.Helper()
		c, err := st.OpenCheckpoint("r", 1)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, r := range [][2]uint64{{0, 3000}, {0, 1}, {99, 3}, {127, 130}, {650, 400}, {1000, 1}, {1001, 1}, {2999, 1}, {2900, 100}} {
			dst := bytes.Repeat([]byte{0xee}, int(r[1])*PageSize)
			holes, err := c.ReadWorkingSet(r[0], dst)
			want := r[1] - ws.CardinalityInRange(r[0], r[0]+r[1])
			if err != nil || holes != want || !bytes.Equal(dst, sparse[r[0]*PageSize:(r[0]+r[1])*PageSize]) {
				t.Fatalf("%s: ReadWorkingSet(%d, %d frames): %d holes (want %d), %v, equal %v",
					what, r[0], r[1], holes, want, err, bytes.Equal(dst, sparse[r[0]*PageSize:(r[0]+r[1])*PageSize]))
			}
		}
		for _, r := range [][2]uint64{{0, 3000}, {650, 2000}, {2995, 3000}} {
			pieces, err := c.WorkingSetPieces(r[0], r[1], 300)
			if err != nil {
				t.Fatal(err)
			}
			seen := roaring.New()
			for k, p := range pieces {
				before := ws.Rank(uint32(p.Extents[0].Start)) - 1
				if k > 0 && before%256 != 0 {
					t.Fatalf("%s: piece %d of [%d, %d) starts at rank %d, not at a 256-frame boundary", what, k, r[0], r[1], before)
				}
				if p.Frames() > 256 {
					t.Fatalf("%s: piece of %d frames", what, p.Frames())
				}
				buf := make([]byte, p.Frames()*PageSize)
				if err := c.ReadPiece(p, buf); err != nil {
					t.Fatalf("%s: ReadPiece: %v", what, err)
				}
				off := uint64(0)
				for _, e := range p.Extents {
					if seen.CardinalityInRange(e.Start, e.End) != 0 {
						t.Fatalf("%s: frames %d..%d in two pieces", what, e.Start, e.End)
					}
					seen.AddRange(e.Start, e.End)
					n := (e.End - e.Start) * PageSize
					if !bytes.Equal(buf[off:off+n], sparse[e.Start*PageSize:e.End*PageSize]) {
						t.Fatalf("%s: piece frames %d..%d differ", what, e.Start, e.End)
					}
					off += n
				}
			}
			want := ws.Clone()
			want.RemoveRange(0, r[0])
			want.RemoveRange(r[1], 1<<32)
			if !seen.Equals(want) {
				t.Fatalf("%s: pieces of [%d, %d) cover %d frames, want %d", what, r[0], r[1], seen.GetCardinality(), want.GetCardinality())
			}
		}
		small, err := c.WorkingSetPieces(0, 3000, 100)
		var n uint64
		for _, p := range small {
			if p.Frames() > 100 {
				t.Fatalf("%s: a piece of %d frames, asked for at most 100", what, p.Frames())
			}
			n += p.Frames()
		}
		if err != nil || n != ws.GetCardinality() {
			t.Fatalf("%s: pieces of 100 frames hold %d frames, %v", what, n, err)
		}
		if _, err := c.ReadWorkingSet(2999, make([]byte, 2*PageSize)); !errors.Is(err, ErrBadInput) {
			t.Errorf("%s: read beyond the end: %v", what, err)
		}
	}
	check("no pack")
	if _, err := st.PackRun(context.Background(), "r"); err != nil {
		t.Fatal(err)
	}
	check("packed")
	c, err := st.OpenCheckpoint("r", 1)
	if err != nil {
		t.Fatal(err)
	}
	if ws := c.packed(); ws == nil {
		t.Fatal("the handle does not use the pack")
	}
	c.Close()
	key := appendPackKey(nil, c.run.ID, 1, 1)
	v, closer, err := st.db.Get(key)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(v)
	closer.Close()
	bad[packFrames*checksumLen+7] ^= 0xff
	if err := st.db.Set(key, bad, nil); err != nil {
		t.Fatal(err)
	}
	check("damaged pack")

	// Interval 2 is the last one: no W yet.
	c2, err := st.OpenCheckpoint("r", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.ReadWorkingSet(0, make([]byte, PageSize)); !errors.Is(err, ErrNoWorkingSet) {
		t.Errorf("checkpoint without W: %v", err)
	}
}
