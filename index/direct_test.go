package index

import (
	"bytes"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestDirectWritable writes files of sizes around the buffer and alignment
// boundaries in pieces of random sizes and checks that each file holds
// exactly the bytes written: the padded tail is truncated away.
func TestDirectWritable(t *testing.T) {
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, directAlign - 1, directAlign, directAlign + 1,
		directBufSize - 1, directBufSize, directBufSize + 1, 3*directBufSize + 12345} {
		want := make([]byte, size)
		for i := range want {
			want[i] = byte(rng.Uint32())
		}
		path := filepath.Join(dir, "t")
		w, ok, err := createDirect(path)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			t.Skip("this file system refuses O_DIRECT")
		}
		for rest := want; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(200000))
			// Write may scribble on its argument (objstorage.Writable
			// allows it), so hand it a copy.
			if err := w.Write(append([]byte(nil), rest[:n]...)); err != nil {
				t.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := w.Finish(); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("size %d: file has %d bytes, differs from what was written", size, len(got))
		}
		os.Remove(path)
	}
	// An existing path is refused, not overwritten.
	os.WriteFile(filepath.Join(dir, "x"), []byte("keep"), 0o600)
	if _, _, err := createDirect(filepath.Join(dir, "x")); err == nil {
		t.Error("createDirect overwrote an existing file")
	}
}
