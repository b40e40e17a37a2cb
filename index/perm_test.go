package index

import (
	"context"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestOwnerOnlyFiles: a store made in an existing 0755 directory under
// umask 022 holds no file or directory that group or others can read, on
// every write path (batches, ingested frame tables written directly and
// through the page cache, packs, the WAL, Pebble's own files); and opening
// a store tightens files an older version left readable.
func TestOwnerOnlyFiles(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	for _, buffered := range []bool{false, true} {
		dir := filepath.Join(t.TempDir(), "S")
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		st, err := Open(dir, Options{Create: true, BufferedTables: buffered})
		if err != nil {
			t.Fatal(err)
		}
		rng := rand.New(rand.NewPCG(6, 6))
		writeHistory(t, st, "small", randomHistory(rng, 64, 3))
		writeHistory(t, st, "large", randomHistory(rng, 3000, 3)) // > smallCheckpoint: ingested tables
		if _, err := st.PackRun(context.Background(), "large"); err != nil {
			t.Fatal(err)
		}
		if err := st.Close(); err != nil {
			t.Fatal(err)
		}
		checkOwnerOnly(t, dir)

		// A file an older version left 0644 is 0600 after the next Open;
		// a file of the user's own in the directory keeps its mode.
		tables, _ := filepath.Glob(filepath.Join(dir, "*.sst"))
		if len(tables) == 0 {
			t.Fatal("no tables")
		}
		os.Chmod(tables[0], 0o644)
		mine := filepath.Join(dir, "notes.txt")
		os.WriteFile(mine, nil, 0o644)
		if st, err = Open(dir, Options{}); err != nil {
			t.Fatal(err)
		}
		st.Close()
		if fi, _ := os.Stat(mine); fi.Mode().Perm() != 0o644 {
			t.Fatalf("Open changed the mode of a file of the user's to %v", fi.Mode())
		}
		os.Remove(mine)
		checkOwnerOnly(t, dir)
	}
	// A store directory ckptfs creates is 0700.
	dir := filepath.Join(t.TempDir(), "new", "S")
	st, err := Open(dir, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("new store directory has mode %v", fi.Mode())
	}
}

func checkOwnerOnly(t *testing.T, dir string) {
	t.Helper()
	n := 0
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			t.Fatal(err)
		}
		if p == dir {
			return nil
		}
		fi, _ := d.Info()
		if fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v", p, fi.Mode())
		}
		n++
		return nil
	})
	if n < 5 {
		t.Fatalf("only %d files in the store", n)
	}
}
