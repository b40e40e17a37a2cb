package kvmrec

import (
	"bytes"
	"slices"
	"testing"

	"github.com/zeebo/xxh3"
)

// TestSettlePrecopy: frames the pause scanned again leave the pre-copy
// (whatever the pause found), the others keep their pre-copied content and
// hash, and each merges the parts in pfn order.
func TestSettlePrecopy(t *testing.T) {
	var pool chunkPool
	defer pool.close()
	frame := func(pfn uint64, gen byte) []byte {
		f := make([]byte, pageSize)
		f[0], f[1] = byte(pfn), gen
		return f
	}
	pre := &staging{pre: true}
	for _, p := range []uint64{1, 3, 5, 7, 9} {
		f := frame(p, 1)
		if err := pre.add(&pool, p, f); err != nil {
			t.Fatal(err)
		}
		pre.hashes = append(pre.hashes, xxh3.Hash128(f))
	}
	// The pause scanned 3..5 and 9: 3 changed again, 4 changed for the
	// first time, 5 and 9 went back to their old content (no copy).
	pause := &staging{}
	for _, p := range []uint64{3, 4} {
		if err := pause.add(&pool, p, frame(p, 2)); err != nil {
			t.Fatal(err)
		}
	}
	cands := []span{{3, 6}, {9, 10}}
	hashes := make([]xxh3.Uint128, 16)
	c := &capture{parts: []*staging{pre, pause}}
	c.settlePrecopy(cands, hashes)

	var got []uint64
	if err := c.each(func(pfn uint64, f []byte) error {
		got = append(got, pfn)
		want := byte(1)
		if pfn == 3 || pfn == 4 {
			want = 2
		}
		if !bytes.Equal(f, frame(pfn, want)) {
			t.Errorf("frame %d: wrong content (generation %d wanted)", pfn, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 3, 4, 7}; !slices.Equal(got, want) {
		t.Errorf("frames %v, want %v", got, want)
	}
	if n := c.frames(); n != 4 {
		t.Errorf("frames() = %d, want 4", n)
	}
	for p := range hashes {
		settled := p == 1 || p == 7
		if (hashes[p] != xxh3.Uint128{}) != settled {
			t.Errorf("hash of frame %d settled=%v, want %v", p, hashes[p] != xxh3.Uint128{}, settled)
		}
	}
	pool.put(c.chunks())
}
