package index

import (
	"errors"
	"math/rand/v2"
	"testing"
)

// TestReadRemovedRun: reads of a checkpoint handle whose run was removed
// while it was open fail with ErrRunRemoved (also ErrRunNotFound), never
// as corruption, never with made-up zeros, and log nothing.
func TestReadRemovedRun(t *testing.T) {
	logger, logged := newCountingLogger()
	st, err := Open(t.TempDir(), Options{Create: true, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := randomHistory(rand.New(rand.NewPCG(8, 8)), 3000, 2) // tables and a batch
	writeHistory(t, st, "r", h)
	var cs []*Checkpoint
	buf := make([]byte, 16*PageSize)
	for i := range h.images {
		c, err := st.OpenCheckpoint("r", i)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i == 0 { // one handle warm (map built, iterators pooled), one cold
			if err := c.ReadFrames(0, buf); err != nil {
				t.Fatal(err)
			}
		}
		cs = append(cs, c)
	}
	if err := st.DeleteRun("r"); err != nil {
		t.Fatal(err)
	}
	for i, c := range cs {
		for _, err := range []error{c.ReadFrames(100, buf), c.readFrame(5, buf[:PageSize])} {
			if !errors.Is(err, ErrRunRemoved) || !errors.Is(err, ErrRunNotFound) || IsCorruption(err) {
				t.Fatalf("checkpoint %d: read after rm: %v; want ErrRunRemoved", i, err)
			}
		}
		if _, err := c.DataFrames(); !errors.Is(err, ErrRunRemoved) {
			t.Fatalf("checkpoint %d: DataFrames after rm: %v", i, err)
		}
	}
	if n, lines := logged(); n != 0 {
		t.Fatalf("reads of a removed run logged %d lines: %q", n, lines)
	}
}
