package fs

import "testing"

// TestPieces checks how a push cuts W: every piece but the last holds
// exactly pieceFrames frames (whole pack chunks, which prefetch.go checks
// at compile time), so no two loaders decode the same chunk; runs keep
// their order and no frame is lost or repeated.
func TestPieces(t *testing.T) {
	ext := extents{{3, 5}, {10, 10 + pieceFrames - 1}, {600, 601}, {1000, 1000 + 2*pieceFrames + 7}, {5000, 5003}}
	ps := pieces(ext)
	var got extents
	for k, pc := range ps {
		if n := pc.frames(); k < len(ps)-1 && n != pieceFrames || n == 0 || n > pieceFrames {
			t.Errorf("piece %d has %d frames", k, n)
		}
		for _, e := range pc {
			if e.start >= e.end {
				t.Errorf("piece %d has an empty run %v", k, e)
			}
			if k := len(got); k > 0 && got[k-1].end == e.start {
				got[k-1].end = e.end
			} else {
				got = append(got, e)
			}
		}
	}
	if len(got) != len(ext) {
		t.Fatalf("pieces join to %v, want %v", got, ext)
	}
	for i := range ext {
		if got[i] != ext[i] {
			t.Fatalf("pieces join to %v, want %v", got, ext)
		}
	}
	if want := (ext.frames() + pieceFrames - 1) / pieceFrames; uint64(len(ps)) != want {
		t.Errorf("%d pieces, want %d", len(ps), want)
	}
}
