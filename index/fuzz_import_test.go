package index

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/index/rawfmt"
)

// fuzzFrames is the RAM size of the fuzzed imports, in frames.
const fuzzFrames = 8

// FuzzImportWorkingSet feeds a .ws text through Import, with three tiny
// dumps, into a commit: either the import fails cleanly (an error, no run
// left behind) or the run is committed, W_0 and W_1 read back equal to the
// parsed set, every checkpoint reads back its dump, sparse reads through
// the working-set packs give the right bytes, and verify passes.
func FuzzImportWorkingSet(f *testing.F) {
	for _, s := range []string{
		"", "\n", "0-7\n", "0,2,4-6\n", "3", "7",
		"5-3",             // reversed
		"8", "0-8", "100", // beyond RAM
		"0-4294967295",            // huge range
		"99999999999999999999999", // not a pfn
		strings.Repeat("1,", 5000) + "1",
		" 1", "1,,2", "-1", "1-", "x", "0-3\n\n", "0-3 \t\r\n",
	} {
		f.Add([]byte(s))
	}
	dumps := make([][]byte, 3)
	for i := range dumps {
		dumps[i] = make([]byte, fuzzFrames*PageSize)
		for p := 0; p < fuzzFrames; p++ {
			if (p+i)%3 != 0 { // some zero frames, some changed
				dumps[i][p*PageSize] = byte(1 + p + 16*i)
			}
		}
	}
	f.Fuzz(func(t *testing.T, ws []byte) {
		dir := t.TempDir()
		var paths []string
		for i, d := range dumps {
			p := filepath.Join(dir, "d"+strconv.Itoa(i))
			if err := os.WriteFile(p, d, 0o600); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		for i := 0; i < 2; i++ {
			if err := os.WriteFile(filepath.Join(dir, strconv.Itoa(i)+".ws"), ws, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		st, err := Open("", Options{InMemory: true, CacheSize: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		want, perr := ParseList(ws, fuzzFrames)
		ctx := context.Background()
		ri, err := st.Import(ctx, ImportSpec{Run: "f", Dumps: paths, WSDir: dir})
		if perr != nil {
			if err == nil || !errors.Is(err, ErrBadInput) || strings.Contains(err.Error(), "\n") || len(err.Error()) > 300 {
				t.Fatalf("import of bad list %.60q: %v", ws, err)
			}
			if runs, err := st.Runs(); err != nil || len(runs) != 0 {
				t.Fatalf("a failed import left runs %v (%v)", runs, err)
			}
			return
		}
		if err != nil {
			t.Fatalf("import of good list %.60q: %v", ws, err)
		}
		if ri.Checkpoints != 3 || ri.Intervals != 2 {
			t.Fatalf("%d checkpoints, %d intervals", ri.Checkpoints, ri.Intervals)
		}
		if _, err := st.PackRun(ctx, "f"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, fuzzFrames*PageSize)
		for i := range dumps {
			c, err := st.OpenCheckpoint("f", i)
			if err != nil {
				t.Fatal(err)
			}
			if err := c.ReadFrames(0, buf); err != nil || !bytes.Equal(buf, dumps[i]) {
				t.Fatalf("checkpoint %d reads back wrong: %v", i, err)
			}
			if i < 2 {
				got, err := st.WorkingSet("f", i)
				if err != nil || !got.Equals(want) {
					t.Fatalf("W_%d = %v (%v), want %v", i, got, err, want)
				}
				// Every run of W_i, read alone, comes from the pack.
				var rerr error
				rawfmt.EachRun(want, func(a, b uint64) bool {
					part := buf[:(b-a)*PageSize]
					if rerr = c.ReadFrames(a, part); rerr == nil && !bytes.Equal(part, dumps[i][a*PageSize:b*PageSize]) {
						rerr = errors.New("wrong bytes")
					}
					return rerr == nil
				})
				if rerr != nil {
					t.Fatalf("checkpoint %d, W_%d read: %v", i, i, rerr)
				}
			}
			c.Close()
		}
		if _, err := st.Verify(ctx, "", nil); err != nil {
			t.Fatal(err)
		}
	})
}
