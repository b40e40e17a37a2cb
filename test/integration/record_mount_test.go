package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
	"golang.org/x/sys/unix"
)

// TestRecordIntoRunningMount: a mount owns the store; a recording of the
// synthetic guest goes through its socket, and the new run appears in the
// mount as its checkpoints commit. Checks the files against the store's
// export and the working sets against the guest's truth; then Ctrl-C
// unmounts cleanly.
func TestRecordIntoRunningMount(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	// An imported run, to see it served next to the recorded one.
	seed := filepath.Join(dir, "seed")
	os.WriteFile(seed, bytes.Repeat([]byte{7}, 16*index.PageSize), 0o600)
	mustCkptfs(t, store, "import", "--run", "seed", seed)

	mount := startMount(t, store, mnt)
	if _, err := os.Stat(filepath.Join(mnt, "seed", "full", "0.ram")); err != nil {
		t.Fatalf("imported run not in the mount: %v", err)
	}

	truth := filepath.Join(dir, "truth")
	os.Mkdir(truth, 0o700)
	mem, qmp := filepath.Join(dir, "ram"), filepath.Join(dir, "qmp.sock")
	startDaemon(t, "synth-guest", "-mem", mem, "-ram-size", "32M", "-qmp", qmp,
		"-ws", "0.1", "-dirty", "0.03", "-locality", "0.5", "-truth", truth)
	waitFor(t, 10*time.Second, func() bool { _, err := os.Stat(qmp); return err == nil }, "synthetic guest")

	// Forwarded: the mount process records.
	out := mustCkptfs(t, store, "record", "--run", "syn", "--qmp", qmp, "--mem", mem, "--interval", "300ms", "--count", "4")
	if !strings.Contains(out, "recorded syn: 4 checkpoints") {
		t.Fatalf("record output: %q", out)
	}
	run := filepath.Join(mnt, "syn")
	var meta struct {
		RAMSize   uint64 `json:"ram_size"`
		Intervals int    `json:"intervals"`
	}
	data, err := os.ReadFile(filepath.Join(run, "run.json"))
	if err != nil || json.Unmarshal(data, &meta) != nil {
		t.Fatalf("run.json: %v %s", err, data)
	}
	if meta.RAMSize != 32<<20 || meta.Intervals != 3 {
		t.Fatalf("run.json: %+v", meta)
	}
	for i := 0; i < 4; i++ {
		exp := filepath.Join(dir, fmt.Sprintf("export%d", i))
		mustCkptfs(t, store, "export", "--run", "syn", "--interval", fmt.Sprint(i), exp)
		want, _ := os.ReadFile(exp)
		got, err := os.ReadFile(filepath.Join(run, "full", fmt.Sprintf("%d.ram", i)))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("full/%d.ram differs from the export (%v)", i, err)
		}
		if i == 3 {
			if _, err := os.Stat(filepath.Join(run, "3.ram")); err == nil {
				t.Fatal("3.ram exists, but W_3 is not known yet")
			}
			continue
		}
		ws := readWS(t, filepath.Join(run, fmt.Sprintf("%d.ws", i)), meta.RAMSize/index.PageSize)
		// SEEK_DATA/SEEK_HOLE of <i>.ram walk exactly W_i.
		if got := seekDataFrames(t, filepath.Join(run, fmt.Sprintf("%d.ram", i))); got != index.FormatList(ws) {
			t.Fatalf("%d.ram: data %q, W_%d %q", i, got, i, index.FormatList(ws))
		}
		// The recorded working set holds every frame the guest touched.
		// The guest counts pauses from its first stop, which is checkpoint 0.
		accessed := readWS(t, filepath.Join(truth, fmt.Sprintf("%d.accessed", i)), meta.RAMSize/index.PageSize)
		if missing := roaring.AndNot(accessed, ws); !missing.IsEmpty() {
			t.Fatalf("W_%d misses %d truly accessed frames", i, missing.GetCardinality())
		}
		t.Logf("interval %d: |W| = %d, truly accessed %d (precision %.0f %%)", i, ws.GetCardinality(), accessed.GetCardinality(),
			100*float64(accessed.GetCardinality())/float64(max(ws.GetCardinality(), 1)))
	}
	mount.stop(t)
	if isMounted(mnt) {
		t.Fatal("still mounted after Ctrl-C")
	}
	// The store is free again and sound.
	if out := mustCkptfs(t, store, "verify"); !strings.HasPrefix(out, "ok:") {
		t.Fatalf("verify: %q", out)
	}
}

func readWS(t *testing.T, path string, frames uint64) *roaring.Bitmap {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	bm, err := index.ParseList(data, frames)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return bm
}

// seekDataFrames walks SEEK_DATA/SEEK_HOLE and returns the data frames in
// list format.
func seekDataFrames(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, _ := f.Stat()
	var b strings.Builder
	off := int64(0)
	for off < fi.Size() {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		first, last := data/index.PageSize, hole/index.PageSize-1
		if first == last {
			fmt.Fprintf(&b, "%d", first)
		} else {
			fmt.Fprintf(&b, "%d-%d", first, last)
		}
		off = hole
	}
	b.WriteByte('\n')
	return b.String()
}

// TestStaleMountAfterKill: a killed daemon leaves a dead mount; the next
// mount says so clearly and, when asked, cleans it up.
func TestStaleMountAfterKill(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := t.TempDir()
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	seed := filepath.Join(dir, "seed")
	os.WriteFile(seed, bytes.Repeat([]byte{1}, 4*index.PageSize), 0o600)
	mustCkptfs(t, store, "import", "--run", "seed", seed)
	d := startMount(t, store, mnt)
	d.cmd.Process.Kill()
	<-d.done
	code, _, errs := ckptfs(t, store, "mount", mnt)
	if code == 0 || !strings.Contains(errs, "stale") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("mount over a stale mount: exit %d, %q", code, errs)
	}
	d2 := startMount(t, store, mnt, "--cleanup-stale")
	if _, err := os.Stat(filepath.Join(mnt, "seed", "run.json")); err != nil {
		t.Fatalf("mount after cleanup: %v", err)
	}
	d2.stop(t)
}
