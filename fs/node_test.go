package fs

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/ckptfs/ckptfs/index"
)

// Node tests call the nodes directly through fs.NewNodeFS, without a mount.

// nodeFS builds the node tree of src and returns its root.
func nodeFS(t *testing.T, src Source, opts MountOptions) *rootNode {
	t.Helper()
	if opts.Registry == nil {
		opts.Registry = prometheus.NewRegistry()
	}
	if opts.Logger == nil {
		opts.Logger, _ = newTestLogger(t)
	}
	f, err := newFsys(src, opts)
	if err != nil {
		t.Fatal(err)
	}
	newNodeFS(f)
	t.Cleanup(f.close)
	return f.root
}

func lookup(t *testing.T, parent gofs.InodeEmbedder, name string) (gofs.InodeEmbedder, fuse.EntryOut) {
	t.Helper()
	var out fuse.EntryOut
	in, e := parent.(gofs.NodeLookuper).Lookup(context.Background(), name, &out)
	if e != 0 {
		t.Fatalf("lookup %q: %v", name, e)
	}
	return in.Operations(), out
}

func lookupErr(parent gofs.InodeEmbedder, name string) syscall.Errno {
	var out fuse.EntryOut
	_, e := parent.(gofs.NodeLookuper).Lookup(context.Background(), name, &out)
	return e
}

func readdir(t *testing.T, dir gofs.InodeEmbedder) []string {
	t.Helper()
	ds, e := dir.(gofs.NodeReaddirer).Readdir(context.Background())
	if e != 0 {
		t.Fatalf("readdir: %v", e)
	}
	var names []string
	for ds.HasNext() {
		de, e := ds.Next()
		if e != 0 {
			t.Fatal(e)
		}
		names = append(names, de.Name)
	}
	return names
}

// memFixture puts a generated run into a memory source.
func memFixture(name string, frames uint64, n int, seed uint64) (*memSource, *fixture) {
	fx := newFixture(name, frames, n, seed)
	src := newMemSource()
	src.add(name, fx.images, fx.ws, fx.dev)
	return src, fx
}

func TestNodeLookupReaddir(t *testing.T) {
	src, fx := memFixture("vm1", 256, 4, 1)
	root := nodeFS(t, src, MountOptions{})

	if got := readdir(t, root); strings.Join(got, " ") != "vm1" {
		t.Errorf("root lists %q", got)
	}
	for _, bad := range []string{"nope", ".hidden", "-x", ""} {
		if e := lookupErr(root, bad); e != syscall.ENOENT {
			t.Errorf("lookup %q: %v, want ENOENT", bad, e)
		}
	}
	run, out := lookup(t, root, "vm1")
	if out.Mode != syscall.S_IFDIR|0o500 {
		t.Errorf("run dir mode %o", out.Mode)
	}
	// 4 checkpoints, 3 working sets; device state on even checkpoints.
	want := "full run.json 0.dev 0.json 0.ram 0.ws 1.json 1.ram 1.ws 2.dev 2.json 2.ram 2.ws 3.json"
	if got := strings.Join(readdir(t, run), " "); got != want {
		t.Errorf("run dir lists\n%s\nwant\n%s", got, want)
	}
	for _, name := range strings.Fields(want) {
		lookup(t, run, name)
	}
	for _, name := range []string{"3.ram", "3.ws", "1.dev", "4.json", "01.ram", "+1.ram", "1.txt", "1", "1.ram.x", "999999999999.ram"} {
		if e := lookupErr(run, name); e != syscall.ENOENT {
			t.Errorf("lookup %q: %v, want ENOENT", name, e)
		}
	}
	full, _ := lookup(t, run, "full")
	if got := strings.Join(readdir(t, full), " "); got != "0.ram 1.ram 2.ram 3.ram" {
		t.Errorf("full lists %q", got)
	}
	if e := lookupErr(full, "4.ram"); e != syscall.ENOENT {
		t.Errorf("full/4.ram: %v", e)
	}

	// A lookup twice gives the same node, and lookups keep no
	// checkpoint handle (the kernel never forgets a node go-fuse drops).
	a, _ := lookup(t, run, "1.ram")
	b, _ := lookup(t, run, "1.ram")
	lookup(t, full, "1.ram")
	root.f.mu.Lock()
	for k, c := range root.f.mu.ckpts {
		if c.refs != 0 {
			t.Errorf("checkpoint %v has %d references after lookups", k, c.refs)
		}
	}
	root.f.mu.Unlock()
	if a.EmbeddedInode().StableAttr() != b.EmbeddedInode().StableAttr() {
		t.Errorf("1.ram looked up twice gives two inode numbers")
	}

	// Content files.
	ws, _ := lookup(t, run, "1.ws")
	if got := readAll(t, ws); got != index.FormatList(fx.ws[1]) {
		t.Errorf("1.ws = %q, want %q", got, index.FormatList(fx.ws[1]))
	}
	dev, _ := lookup(t, run, "2.dev")
	if got := readAll(t, dev); got != "device state 2" {
		t.Errorf("2.dev = %q", got)
	}
	var rj struct {
		RAMSize     uint64 `json:"ram_size"`
		PageSize    int    `json:"page_size"`
		Checkpoints int    `json:"checkpoints"`
		Intervals   int    `json:"intervals"`
		Recorder    string `json:"recorder"`
		Tracker     string `json:"tracker"`
	}
	rjNode, _ := lookup(t, run, "run.json")
	if err := json.Unmarshal([]byte(readAll(t, rjNode)), &rj); err != nil {
		t.Fatal(err)
	}
	if rj.RAMSize != 256*pageSize || rj.PageSize != pageSize || rj.Checkpoints != 4 || rj.Intervals != 3 || rj.Tracker != "test" {
		t.Errorf("run.json = %+v", rj)
	}
}

func readAll(t *testing.T, n gofs.InodeEmbedder) string {
	t.Helper()
	fh, _, e := n.(gofs.NodeOpener).Open(context.Background(), syscall.O_RDONLY)
	if e != 0 {
		t.Fatalf("open: %v", e)
	}
	res, e := n.(gofs.NodeReader).Read(context.Background(), fh, make([]byte, 1<<20), 0)
	if e != 0 {
		t.Fatalf("read: %v", e)
	}
	b, _ := res.Bytes(nil)
	return string(b)
}

func TestNodeGetattrLseek(t *testing.T) {
	src, fx := memFixture("vm1", 1024, 3, 2)
	root := nodeFS(t, src, MountOptions{})
	run, _ := lookup(t, root, "vm1")
	full, _ := lookup(t, run, "full")
	for i := range 3 {
		files := map[string]*roaring.Bitmap{}
		fn, _ := lookup(t, full, itoa(i)+".ram")
		files["full/"+itoa(i)+".ram"] = fx.nonZero(i)
		var sparse gofs.InodeEmbedder
		if i < 2 {
			sparse, _ = lookup(t, run, itoa(i)+".ram")
			files[itoa(i)+".ram"] = fx.ws[i]
		}
		for name, want := range files {
			node := fn
			if !strings.HasPrefix(name, "full/") {
				node = sparse
			}
			var out fuse.AttrOut
			if e := node.(gofs.NodeGetattrer).Getattr(context.Background(), nil, &out); e != 0 {
				t.Fatal(e)
			}
			if out.Size != fx.frames*pageSize || out.Blocks != want.GetCardinality()*8 || out.Mode != syscall.S_IFREG|0o600 {
				t.Errorf("%s: size %d blocks %d mode %o, want %d %d", name, out.Size, out.Blocks, out.Mode, fx.frames*pageSize, want.GetCardinality()*8)
			}
			if got := walkSeek(t, node.(gofs.NodeLseeker), fx.frames*pageSize); !got.Equals(want) {
				t.Errorf("%s: SEEK_DATA/SEEK_HOLE walk gives %s, want %s", name, index.FormatList(got), index.FormatList(want))
			}
		}
	}
	// Edge cases of lseek.
	n, _ := lookup(t, run, "0.ram")
	ls := n.(gofs.NodeLseeker)
	size := fx.frames * pageSize
	if _, e := ls.Lseek(context.Background(), nil, size, seekData); e != syscall.ENXIO {
		t.Errorf("SEEK_DATA at size: %v", e)
	}
	if _, e := ls.Lseek(context.Background(), nil, size, seekHole); e != syscall.ENXIO {
		t.Errorf("SEEK_HOLE at size: %v", e)
	}
	first := uint64(fx.ws[0].Minimum())
	if off, _ := ls.Lseek(context.Background(), nil, first*pageSize+100, seekData); off != first*pageSize+100 {
		t.Errorf("SEEK_DATA inside data moves to %d", off)
	}
	if _, e := ls.Lseek(context.Background(), nil, 0, 0 /* SEEK_SET */); e != syscall.EINVAL {
		t.Errorf("SEEK_SET: %v", e)
	}
	last := uint64(fx.ws[0].Maximum())
	if _, e := ls.Lseek(context.Background(), nil, (last+1)*pageSize, seekData); last+1 < fx.frames && e != syscall.ENXIO {
		t.Errorf("SEEK_DATA after the last data: %v", e)
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

// walkSeek reproduces a file's data frames from SEEK_DATA/SEEK_HOLE.
func walkSeek(t *testing.T, ls gofs.NodeLseeker, size uint64) *roaring.Bitmap {
	t.Helper()
	bm := roaring.New()
	off := uint64(0)
	for off < size {
		d, e := ls.Lseek(context.Background(), nil, off, seekData)
		if e == syscall.ENXIO {
			break
		}
		if e != 0 {
			t.Fatal(e)
		}
		h, e := ls.Lseek(context.Background(), nil, d, seekHole)
		if e != 0 {
			t.Fatal(e)
		}
		if d%pageSize != 0 || h%pageSize != 0 || h <= d {
			t.Fatalf("data %d..%d", d, h)
		}
		bm.AddRange(d/pageSize, h/pageSize)
		off = h
	}
	return bm
}

func TestNodeRead(t *testing.T) {
	src, fx := memFixture("vm1", 512, 3, 3)
	root := nodeFS(t, src, MountOptions{Prefetch: "none"})
	run, _ := lookup(t, root, "vm1")
	full, _ := lookup(t, run, "full")
	ctx := context.Background()
	read := func(n gofs.InodeEmbedder, off int64, size int) ([]byte, syscall.Errno) {
		fh, _, e := n.(gofs.NodeOpener).Open(ctx, syscall.O_RDONLY)
		if e != 0 {
			return nil, e
		}
		res, e := n.(gofs.NodeReader).Read(ctx, fh, make([]byte, size), off)
		if e != 0 {
			return nil, e
		}
		b, _ := res.Bytes(nil)
		return b, 0
	}
	for i := range 3 {
		fn, _ := lookup(t, full, itoa(i)+".ram")
		for _, r := range [][2]int64{{0, 1 << 20}, {5 * pageSize, 3 * pageSize}, {100, 5000}, {int64(fx.frames*pageSize) - 10, 100}} {
			got, e := read(fn, r[0], int(r[1]))
			if e != 0 {
				t.Fatal(e)
			}
			img := fx.images[i]
			want := img[r[0]:min(int64(len(img)), r[0]+r[1])]
			if !bytes.Equal(got, want) {
				t.Errorf("full/%d.ram [%d+%d): wrong bytes", i, r[0], r[1])
			}
		}
	}
	// Single frames of <0>.ram: data frames and holes (holes are misses).
	sn, _ := lookup(t, run, "0.ram")
	sparse := fx.sparseImage(0)
	var holes uint64
	for p := uint64(0); p < fx.frames; p += 7 {
		got, e := read(sn, int64(p*pageSize), pageSize)
		if e != 0 {
			t.Fatal(e)
		}
		if !bytes.Equal(got, sparse[p*pageSize:(p+1)*pageSize]) {
			t.Fatalf("0.ram frame %d: wrong bytes", p)
		}
		if !fx.ws[0].Contains(uint32(p)) {
			holes++
		}
	}
	ctrs := root.f.counters(ckptKey{1, 0}).snapshot()
	if ctrs.MissFrames != holes || ctrs.Misses != holes {
		t.Errorf("misses %d, miss frames %d; want %d", ctrs.Misses, ctrs.MissFrames, holes)
	}
	// A readahead-sized read that covers a hole is refused, once.
	h := uint64(0)
	for fx.ws[0].Contains(uint32(h)) {
		h++
	}
	if _, e := read(sn, int64((h-h%8)*pageSize), 8*pageSize); e != syscall.EIO {
		t.Errorf("8-frame read over a hole: %v, want EIO (refused readahead)", e)
	}
	start := h - h%4
	if got, e := read(sn, int64(start*pageSize), 4*pageSize); e != 0 || !bytes.Equal(got, sparse[start*pageSize:(start+4)*pageSize]) {
		// a folio-shaped read inside a refused window is served
		t.Errorf("folio-shaped read inside a refused window: %v", e)
	}
	// An O_DIRECT read is never refused.
	fh, _, _ := sn.(gofs.NodeOpener).Open(ctx, syscall.O_RDONLY|syscall.O_DIRECT)
	res, e := sn.(gofs.NodeReader).Read(ctx, fh, make([]byte, 64*pageSize), 0)
	if e != 0 {
		t.Fatalf("O_DIRECT read: %v", e)
	}
	if b, _ := res.Bytes(nil); !bytes.Equal(b, sparse[:64*pageSize]) {
		t.Error("O_DIRECT read: wrong bytes")
	}
	// The holes of those two multi-frame READs are not misses.
	holesIn := func(first, last uint64) uint64 {
		return last - first - fx.ws[0].CardinalityInRange(first, last)
	}
	after := root.f.counters(ckptKey{1, 0}).snapshot()
	if want := holesIn(start, start+4) + holesIn(0, 64); after.FolioHoleFrames != want || want == 0 {
		t.Errorf("folio hole frames %d, want %d", after.FolioHoleFrames, want)
	}
	if after.Misses != ctrs.Misses || after.MissFrames != ctrs.MissFrames {
		t.Errorf("multi-frame READs counted as misses: %+v, before %+v", after, ctrs)
	}
	// Beyond the end: nothing.
	if got, e := read(sn, int64(fx.frames*pageSize), pageSize); e != 0 || len(got) != 0 {
		t.Errorf("read at EOF: %d bytes, %v", len(got), e)
	}
}

func TestNodeReadOnly(t *testing.T) {
	src, _ := memFixture("vm1", 64, 2, 4)
	root := nodeFS(t, src, MountOptions{})
	run, _ := lookup(t, root, "vm1")
	n, _ := lookup(t, run, "0.ram")
	ctx := context.Background()
	fh, _, e := n.(gofs.NodeOpener).Open(ctx, syscall.O_RDWR)
	if e != 0 {
		t.Fatalf("open O_RDWR: %v", e)
	}
	if _, e := n.(gofs.NodeWriter).Write(ctx, fh, []byte("x"), 0); e != syscall.EROFS {
		t.Errorf("write: %v, want EROFS", e)
	}
	if e := n.(gofs.NodeSetattrer).Setattr(ctx, fh, &fuse.SetAttrIn{}, &fuse.AttrOut{}); e != syscall.EROFS {
		t.Errorf("setattr: %v, want EROFS", e)
	}
	if _, _, e := n.(gofs.NodeOpener).Open(ctx, syscall.O_RDWR|syscall.O_TRUNC); e != syscall.EROFS {
		t.Errorf("open O_TRUNC: %v, want EROFS", e)
	}
	ws, _ := lookup(t, run, "0.ws")
	if _, _, e := ws.(gofs.NodeOpener).Open(ctx, syscall.O_WRONLY); e != syscall.EROFS {
		t.Errorf("open 0.ws for writing: %v, want EROFS", e)
	}
}

func TestNodeXattr(t *testing.T) {
	src, fx := memFixture("vm1", 128, 3, 5)
	root := nodeFS(t, src, MountOptions{})
	run, _ := lookup(t, root, "vm1")
	full, _ := lookup(t, run, "full")
	n, _ := lookup(t, run, "1.ram")
	get := func(n gofs.InodeEmbedder, name string) (string, syscall.Errno) {
		sz, e := n.(gofs.NodeGetxattrer).Getxattr(context.Background(), name, nil)
		if e != 0 {
			return "", e
		}
		buf := make([]byte, sz)
		k, e := n.(gofs.NodeGetxattrer).Getxattr(context.Background(), name, buf)
		return string(buf[:k]), e
	}
	want := map[string]string{
		"user.ckptfs.run":         "vm1",
		"user.ckptfs.interval":    "1",
		"user.ckptfs.kind":        "sparse",
		"user.ckptfs.ws_frames":   itoa64(fx.ws[1].GetCardinality()),
		"user.ckptfs.data_frames": itoa64(fx.ws[1].GetCardinality()),
	}
	for k, v := range want {
		if got, e := get(n, k); e != 0 || got != v {
			t.Errorf("%s = %q (%v), want %q", k, got, e, v)
		}
	}
	if _, e := get(n, "user.other"); e != syscall.ENODATA {
		t.Errorf("unknown attribute: %v", e)
	}
	if _, e := n.(gofs.NodeGetxattrer).Getxattr(context.Background(), "user.ckptfs.run", make([]byte, 1)); e != syscall.ERANGE {
		t.Errorf("small buffer: %v", e)
	}
	sz, _ := n.(gofs.NodeListxattrer).Listxattr(context.Background(), nil)
	buf := make([]byte, sz)
	k, _ := n.(gofs.NodeListxattrer).Listxattr(context.Background(), buf)
	if got := strings.Split(strings.TrimSuffix(string(buf[:k]), "\x00"), "\x00"); len(got) != len(want) {
		t.Errorf("listxattr %q", got)
	}
	// The last checkpoint has no working set yet.
	f2, _ := lookup(t, full, "2.ram")
	if got, _ := get(f2, "user.ckptfs.data_frames"); got != itoa64(fx.nonZero(2).GetCardinality()) {
		t.Errorf("full/2.ram data_frames = %q", got)
	}
	if _, e := get(f2, "user.ckptfs.ws_frames"); e != syscall.ENODATA {
		t.Errorf("full/2.ram ws_frames: %v", e)
	}
}

func itoa64(v uint64) string { return strconv.FormatUint(v, 10) }

func TestNodeRemovedRun(t *testing.T) {
	src, _ := memFixture("vm1", 64, 2, 6)
	root := nodeFS(t, src, MountOptions{})
	run, _ := lookup(t, root, "vm1")
	src.remove("vm1")
	if e := lookupErr(run, "0.ram"); e != syscall.ENOENT {
		t.Errorf("lookup in a removed run: %v", e)
	}
	// Recorded again under the same name: the old directory stays empty.
	src.add("vm1", [][]byte{make([]byte, 64*pageSize)}, nil, nil)
	if e := lookupErr(run, "full"); e != syscall.ENOENT {
		t.Errorf("old directory of a re-created run: %v", e)
	}
	fresh, _ := lookup(t, root, "vm1")
	if fresh.EmbeddedInode().StableAttr() == run.EmbeddedInode().StableAttr() {
		t.Error("re-created run reuses the old inode")
	}
}

func TestNodeCorruptFrame(t *testing.T) {
	src, _ := memFixture("vm1", 64, 2, 7)
	src.corrupt("vm1", 1, 10)
	logger, lines := newTestLogger(t)
	root := nodeFS(t, src, MountOptions{Logger: logger})
	run, _ := lookup(t, root, "vm1")
	full, _ := lookup(t, run, "full")
	n, _ := lookup(t, full, "1.ram")
	ctx := context.Background()
	fh, _, _ := n.(gofs.NodeOpener).Open(ctx, syscall.O_RDONLY)
	r := n.(gofs.NodeReader)
	// Readahead over the frame fails quietly; the frame itself fails
	// loudly, once; its neighbours read fine.
	if _, e := r.Read(ctx, fh, make([]byte, 16*pageSize), 0); e != syscall.EIO {
		t.Errorf("readahead over a corrupt frame: %v", e)
	}
	if _, e := r.Read(ctx, fh, make([]byte, pageSize), 10*pageSize); e != syscall.EIO {
		t.Errorf("read of a corrupt frame: %v", e)
	}
	if _, e := r.Read(ctx, fh, make([]byte, pageSize), 9*pageSize); e != 0 {
		t.Errorf("read next to a corrupt frame: %v", e)
	}
	var got []string
	for len(lines) > 0 {
		got = append(got, <-lines)
	}
	if len(got) != 1 || !strings.Contains(got[0], "vm1/full/1.ram") || !strings.Contains(got[0], "corrupt=true") {
		t.Errorf("log lines: %q", got)
	}
	st := root.f.status()
	if st.Errors != 1 || !strings.Contains(st.LastError, "checksum") {
		t.Errorf("status %+v", st)
	}
}

// TestNodeWindowPushRace: the push of a refused window may start before the
// code that deferred it has returned (a timer of zero fires at once).
func TestNodeWindowPushRace(t *testing.T) {
	defer func(d time.Duration) { windowPushDelay = d }(windowPushDelay)
	windowPushDelay = 0
	src, fx := memFixture("vm1", 2048, 2, 8)
	root := nodeFS(t, src, MountOptions{Prefetch: "none"})
	run, _ := lookup(t, root, "vm1")
	n, _ := lookup(t, run, "0.ram")
	ctx := context.Background()
	fh, _, _ := n.(gofs.NodeOpener).Open(ctx, syscall.O_RDONLY)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for k := range 200 {
				start := uint64((g*200+k)*8) % (fx.frames - 64)
				n.(gofs.NodeReader).Read(ctx, fh, make([]byte, 64*pageSize), int64(start*pageSize))
				n.(gofs.NodeReader).Read(ctx, fh, make([]byte, pageSize), int64(start*pageSize))
			}
		}()
	}
	wg.Wait()
}

// TestNodeRunJSONFields: run.json has the field names users read, and not
// the store's internal run ID.
func TestNodeRunJSONFields(t *testing.T) {
	src, _ := memFixture("vm1", 64, 2, 4)
	root := nodeFS(t, src, MountOptions{})
	run, _ := lookup(t, root, "vm1")
	rj, _ := lookup(t, run, "run.json")
	var fields map[string]any
	if err := json.Unmarshal([]byte(readAll(t, rj)), &fields); err != nil {
		t.Fatal(err)
	}
	var got []string
	for k := range fields {
		got = append(got, k)
	}
	slices.Sort(got)
	want := []string{"checkpoints", "created", "frames", "intervals", "name", "page_size", "ram_size", "recorder", "tracker"}
	if !slices.Equal(got, want) {
		t.Errorf("run.json fields %q, want %q", got, want)
	}
}

// TestNodeWorkingSetLater: a checkpoint handle taken before W_i was known
// (full/<i>.ram's attributes) serves <i>.ram and <i>.ws once it is.
func TestNodeWorkingSetLater(t *testing.T) {
	fx := newFixture("vm1", 64, 3, 4)
	src := newMemSource()
	src.add("vm1", fx.images, fx.ws[:1], fx.dev)
	root := nodeFS(t, src, MountOptions{})
	run, _ := lookup(t, root, "vm1")
	full, _ := lookup(t, run, "full")
	f1, _ := lookup(t, full, "1.ram")
	buf := make([]byte, 256)
	if _, e := f1.(gofs.NodeGetxattrer).Getxattr(context.Background(), "user.ckptfs.ws_frames", buf); e != syscall.ENODATA {
		t.Fatalf("ws_frames of full/1.ram before W_1: %v, want ENODATA", e)
	}
	if e := lookupErr(run, "1.ram"); e != syscall.ENOENT {
		t.Fatalf("1.ram before W_1: %v", e)
	}
	src.mu.Lock()
	r := src.runs["vm1"]
	r.ws, r.info.Intervals = fx.ws, len(fx.ws)
	src.mu.Unlock()
	sn, _ := lookup(t, run, "1.ram")
	ctx := context.Background()
	fh, _, e := sn.(gofs.NodeOpener).Open(ctx, syscall.O_RDONLY|syscall.O_DIRECT)
	if e != 0 {
		t.Fatalf("open 1.ram: %v", e)
	}
	res, e := sn.(gofs.NodeReader).Read(ctx, fh, make([]byte, 64*pageSize), 0)
	if e != 0 {
		t.Fatalf("read 1.ram: %v", e)
	}
	if got, _ := res.Bytes(nil); !bytes.Equal(got, fx.sparseImage(1)) {
		t.Error("1.ram after W_1 became known: wrong bytes")
	}
	ws, _ := lookup(t, run, "1.ws")
	if got := readAll(t, ws); got != index.FormatList(fx.ws[1]) {
		t.Errorf("1.ws = %q, want %q", got, index.FormatList(fx.ws[1]))
	}
}
