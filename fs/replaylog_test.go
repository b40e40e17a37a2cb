package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

var testQEMUArgs = []string{"-machine", "pc", "-m", "256", "-icount", "shift=auto,rr=record,rrfile=/tmp/r.rr"}

func getattr(t *testing.T, n gofs.InodeEmbedder) fuse.AttrOut {
	t.Helper()
	var out fuse.AttrOut
	if e := n.(gofs.NodeGetattrer).Getattr(context.Background(), nil, &out); e != 0 {
		t.Fatalf("getattr: %v", e)
	}
	return out
}

func readAt(t *testing.T, n gofs.InodeEmbedder, off int64, size int) []byte {
	t.Helper()
	res, e := n.(gofs.NodeReader).Read(context.Background(), nil, make([]byte, size), off)
	if e != 0 {
		t.Fatalf("read %d at %d: %v", size, off, e)
	}
	b, _ := res.Bytes(nil)
	return b
}

// TestNodeReplayLog: replay.log exists only for deterministic runs, follows
// the log as it grows and is cached once complete; run.json and <i>.json
// carry the replay metadata.
func TestNodeReplayLog(t *testing.T) {
	src, _ := memFixture("vm1", 64, 3, 5)
	fx2 := newFixture("plain", 64, 2, 6)
	src.add("plain", fx2.images, fx2.ws, fx2.dev)
	src.setReplay("vm1", testQEMUArgs, []uint64{0, 1000, 250000})
	root := nodeFS(t, src, MountOptions{})

	run, _ := lookup(t, root, "vm1")
	if got := readdir(t, run); !slices.Contains(got, "replay.log") {
		t.Errorf("deterministic run lists %q", got)
	}
	plain, _ := lookup(t, root, "plain")
	if got := readdir(t, plain); slices.Contains(got, "replay.log") {
		t.Errorf("plain run lists %q", got)
	}
	if e := lookupErr(plain, "replay.log"); e != syscall.ENOENT {
		t.Errorf("plain/replay.log: %v", e)
	}

	logNode, out := lookup(t, run, "replay.log")
	if out.Size != 0 || out.Mode != syscall.S_IFREG|0o400 || out.AttrTimeout() != dynamicTimeout {
		t.Errorf("empty log: size %d, mode %o, attr timeout %v", out.Size, out.Mode, out.AttrTimeout())
	}
	if b := readAt(t, logNode, 0, 4096); len(b) != 0 {
		t.Errorf("empty log reads %d bytes", len(b))
	}
	// Growth: the size and content follow each commit.
	var want []byte
	for _, n := range []int{5000, 1, 70000} {
		piece := bytes.Repeat([]byte{byte(n)}, n)
		piece[0] = 'x'
		src.appendLog("vm1", piece, false)
		want = append(want, piece...)
		a := getattr(t, logNode)
		if a.Size != uint64(len(want)) || a.Timeout() != dynamicTimeout {
			t.Fatalf("log of %d bytes: size %d, timeout %v", len(want), a.Size, a.Timeout())
		}
		if got := readAt(t, logNode, 0, 1<<20); !bytes.Equal(got, want) {
			t.Fatalf("log of %d bytes reads %d bytes, or others", len(want), len(got))
		}
	}
	if got := readAt(t, logNode, 4990, 20); !bytes.Equal(got, want[4990:5010]) {
		t.Errorf("read inside: %q", got)
	}
	if got := readAt(t, logNode, int64(len(want)), 10); len(got) != 0 {
		t.Errorf("read at the end: %d bytes", len(got))
	}
	opener := logNode.(gofs.NodeOpener)
	for _, fl := range []uint32{syscall.O_RDWR, syscall.O_WRONLY, syscall.O_RDONLY | syscall.O_TRUNC} {
		if _, _, e := opener.Open(context.Background(), fl); e != syscall.EROFS {
			t.Errorf("open %#x: %v, want EROFS", fl, e)
		}
	}
	var ao fuse.AttrOut
	if e := logNode.(gofs.NodeSetattrer).Setattr(context.Background(), nil, &fuse.SetAttrIn{}, &ao); e != syscall.EROFS {
		t.Errorf("setattr: %v", e)
	}
	if _, fl, e := opener.Open(context.Background(), syscall.O_RDONLY); e != 0 || fl&fuse.FOPEN_DIRECT_IO == 0 {
		t.Errorf("open of a growing log: flags %#x, %v; want direct I/O", fl, e)
	}
	src.appendLog("vm1", []byte("tail"), true)
	want = append(want, "tail"...)
	if a := getattr(t, logNode); a.Size != uint64(len(want)) || a.Timeout() == dynamicTimeout {
		t.Errorf("complete log: size %d, timeout %v", a.Size, a.Timeout())
	}
	if _, fl, e := opener.Open(context.Background(), syscall.O_RDONLY); e != 0 || fl&fuse.FOPEN_KEEP_CACHE == 0 || fl&fuse.FOPEN_DIRECT_IO != 0 {
		t.Errorf("open of a complete log: flags %#x, %v; want the page cache", fl, e)
	}
	if got := readAt(t, logNode, 0, 1<<20); !bytes.Equal(got, want) {
		t.Errorf("complete log reads %d bytes, or others", len(got))
	}

	// run.json and <i>.json.
	var rj struct {
		Deterministic *bool    `json:"deterministic"`
		QEMUArgs      []string `json:"qemu_args"`
	}
	rjNode, _ := lookup(t, run, "run.json")
	if err := json.Unmarshal([]byte(readAll(t, rjNode)), &rj); err != nil {
		t.Fatal(err)
	}
	if rj.Deterministic == nil || !*rj.Deterministic || !slices.Equal(rj.QEMUArgs, testQEMUArgs) {
		t.Errorf("run.json: deterministic %v, qemu_args %q", rj.Deterministic, rj.QEMUArgs)
	}
	var ij struct {
		ICount     *uint64 `json:"icount"`
		Checkpoint struct {
			ICount *uint64 `json:"icount"`
		} `json:"checkpoint"`
	}
	ijNode, _ := lookup(t, run, "2.json")
	if err := json.Unmarshal([]byte(readAll(t, ijNode)), &ij); err != nil {
		t.Fatal(err)
	}
	if ij.ICount == nil || *ij.ICount != 250000 || ij.Checkpoint.ICount == nil || *ij.Checkpoint.ICount != 250000 {
		t.Errorf("2.json: icount %v, checkpoint icount %v", ij.ICount, ij.Checkpoint.ICount)
	}
	rjPlain, _ := lookup(t, plain, "run.json")
	ijPlain, _ := lookup(t, plain, "1.json")
	for _, s := range []string{readAll(t, rjPlain), readAll(t, ijPlain)} {
		if strings.Contains(s, "deterministic") || strings.Contains(s, "qemu_args") || strings.Contains(s, "icount") {
			t.Errorf("a plain run shows replay fields:\n%s", s)
		}
	}

	// The growing log of a removed run is gone.
	fx3 := newFixture("g", 64, 1, 7)
	src.add("g", fx3.images, nil, nil)
	src.setReplay("g", nil, []uint64{5})
	src.appendLog("g", []byte("abc"), false)
	g, _ := lookup(t, root, "g")
	logNode, _ = lookup(t, g, "replay.log")
	src.remove("g")
	var o fuse.AttrOut
	if e := logNode.(gofs.NodeGetattrer).Getattr(context.Background(), nil, &o); e != syscall.ENOENT {
		t.Errorf("getattr of a removed run's log: %v", e)
	}
}

// TestMountedReplayLog records a deterministic run into an on-disk store
// while it is mounted: replay.log grows with each commit and the tail, and
// reads byte-exact through the kernel.
func TestMountedReplayLog(t *testing.T) {
	testenv.RequireFUSE(t)
	st := openStore(t)
	ctx := context.Background()
	w, err := st.CreateRun(index.RunSpec{Name: "det", RAMSize: 16 * pageSize, Recorder: "test", Tracker: "test",
		Deterministic: true, QEMUArgs: testQEMUArgs})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	_, mnt := mountT(t, FromIndex(st), MountOptions{Store: st.Dir()})
	path := filepath.Join(mnt, "det", "replay.log")
	var want []byte
	frame := make([]byte, pageSize)
	commit := func(i int, piece []byte) {
		t.Helper()
		frame[0] = byte(i + 1)
		if err := w.Put(uint64(i), frame); err != nil {
			t.Fatal(err)
		}
		icount := uint64(1000 * i)
		if _, err := w.Commit(ctx, index.CommitInfo{ICount: &icount, ReplayLog: piece}); err != nil {
			t.Fatal(err)
		}
		want = append(want, piece...)
	}
	check := func(what string) {
		t.Helper()
		// A growing log has no attribute caching: the size is right at once.
		fi, err := os.Stat(path)
		if err != nil || fi.Size() != int64(len(want)) {
			t.Fatalf("%s: stat %v, size %d, want %d", what, err, fi.Size(), len(want))
		}
		got, err := os.ReadFile(path)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s: read %d bytes, %v; want %d bytes", what, len(got), err, len(want))
		}
	}
	big := make([]byte, 3<<20+17) // more than a chunk, less than a batch
	for i := range big {
		big[i] = byte(i * 7)
	}
	commit(0, []byte("QEMU replay log header"))
	check("checkpoint 0")
	// A reader that keeps the file open (tail -f) reads what is appended.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got, err := io.ReadAll(f); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("open file: read %q, %v", got, err)
	}
	commit(1, []byte("+more"))
	if got, err := io.ReadAll(f); err != nil || string(got) != "+more" {
		t.Fatalf("open file after a commit: read %q, %v", got, err)
	}
	commit(2, nil)
	check("checkpoint 2")
	commit(3, big)
	check("checkpoint 3")
	if err := w.AppendReplayLog(ctx, []byte("the end"), true); err != nil {
		t.Fatal(err)
	}
	want = append(want, "the end"...)
	check("complete")
	run(t, "cmp", path, writeFile(t, t.TempDir(), "want.log", want))

	var rj struct {
		Deterministic bool     `json:"deterministic"`
		QEMUArgs      []string `json:"qemu_args"`
	}
	readJSON(t, filepath.Join(mnt, "det", "run.json"), &rj)
	if !rj.Deterministic || !slices.Equal(rj.QEMUArgs, testQEMUArgs) {
		t.Errorf("run.json: %+v", rj)
	}
	var ij struct {
		ICount *uint64 `json:"icount"`
	}
	readJSON(t, filepath.Join(mnt, "det", "3.json"), &ij)
	if ij.ICount == nil || *ij.ICount != 3000 {
		t.Errorf("2.json icount %v", ij.ICount)
	}
}
