package fs

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ckptfs/ckptfs/index"
)

// Inode numbers are derived from what a node shows, so that a node looked up
// twice is the same inode (go-fuse keeps one node per number) and a run
// recorded again under an old name gets new numbers (run IDs are never
// reused):
//
//	1                                      the root
//	2                                      .status
//	1<<62 | run<<32 | kind<<28 | interval  everything inside a run
const (
	inoRoot   = 1
	inoStatus = 2
)

type nodeKind uint64

const (
	kindRunDir nodeKind = iota + 1
	kindFullDir
	kindRunJSON
	kindSparse // <i>.ram
	kindWS     // <i>.ws
	kindJSON   // <i>.json
	kindDev    // <i>.dev
	kindFull   // full/<i>.ram
	kindReplayLog
)

const maxInterval = 1<<28 - 1

func ino(run index.RunID, kind nodeKind, i int) uint64 {
	return 1<<62 | uint64(run)<<32 | uint64(kind)<<28 | uint64(i)
}

// Modes: read-only, owner-only unless the mount allows other users, then
// readable by all. The .ram files carry the owner's write bit because a
// VMM (QEMU before 8.2 with share=off) opens them O_RDWR, which
// default_permissions would refuse for a 0400 file; every write still gets
// EROFS.
type modes struct{ dir, file, ram uint32 }

func modesFor(allowOther bool) modes {
	if allowOther {
		return modes{syscall.S_IFDIR | 0o555, syscall.S_IFREG | 0o444, syscall.S_IFREG | 0o644}
	}
	return modes{syscall.S_IFDIR | 0o500, syscall.S_IFREG | 0o400, syscall.S_IFREG | 0o600}
}

// dynamicTimeout is the attribute timeout of files whose content changes
// (run.json, <i>.json, .status): effectively none.
const dynamicTimeout = time.Nanosecond

func setTimes(a *fuse.Attr, t time.Time) {
	a.SetTimes(&t, &t, &t)
}

// parseEntry splits "<i>.<ext>" with i decimal and unpadded.
func parseEntry(name string) (i int, ext string, ok bool) {
	num, ext, found := strings.Cut(name, ".")
	if !found || num == "" || len(num) > 9 || (len(num) > 1 && num[0] == '0') {
		return 0, "", false
	}
	for _, r := range num {
		if r < '0' || r > '9' {
			return 0, "", false
		}
	}
	i, err := strconv.Atoi(num)
	if err != nil || i > maxInterval {
		return 0, "", false
	}
	return i, ext, true
}

// rootNode lists the runs.
type rootNode struct {
	gofs.Inode
	readOnlyDir
	f *fsys
}

var (
	_ = (gofs.NodeLookuper)((*rootNode)(nil))
	_ = (gofs.NodeReaddirer)((*rootNode)(nil))
	_ = (gofs.NodeGetattrer)((*rootNode)(nil))
)

func (n *rootNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = n.f.mode.dir
	out.Nlink = 2
	n.f.owner(&out.Uid, &out.Gid)
	setTimes(&out.Attr, n.f.started)
	return 0
}

func (n *rootNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == ".status" {
		ch := &contentFile{f: n.f, name: name, dynamic: true, mtime: n.f.started, load: n.f.statusJSON}
		if e := ch.attr(&out.Attr); e != 0 {
			return nil, e
		}
		out.SetAttrTimeout(dynamicTimeout)
		return n.NewInode(ctx, ch, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: inoStatus}), 0
	}
	if index.ValidRunName(name) != nil {
		return nil, syscall.ENOENT
	}
	ri, err := n.f.src.Run(name)
	if err != nil {
		return nil, n.f.fail(nil, "lookup", name, 0, 0, err)
	}
	ch := &runDir{f: n.f, name: ri.Name, id: ri.ID, created: ri.Created}
	ch.attr(&out.Attr)
	return n.NewInode(ctx, ch, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino(ri.ID, kindRunDir, 0)}), 0
}

func (n *rootNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	runs, err := n.f.src.Runs()
	if err != nil {
		return nil, n.f.fail(nil, "readdir", "/", 0, 0, err)
	}
	ents := make([]fuse.DirEntry, 0, len(runs))
	for _, r := range runs {
		ents = append(ents, fuse.DirEntry{Name: r.Name, Mode: syscall.S_IFDIR, Ino: ino(r.ID, kindRunDir, 0)})
	}
	return gofs.NewListDirStream(ents), 0
}

func (f *fsys) statusJSON() ([]byte, error) {
	return json.MarshalIndent(f.status(), "", "  ")
}

// runDir is MNT/<run>.
type runDir struct {
	gofs.Inode
	readOnlyDir
	f       *fsys
	name    string
	id      index.RunID
	created time.Time

	mu struct {
		sync.Mutex
		stats map[int]index.IntervalStats // checkpoint i's record, for .dev and mtimes
	}
}

var (
	_ = (gofs.NodeLookuper)((*runDir)(nil))
	_ = (gofs.NodeReaddirer)((*runDir)(nil))
	_ = (gofs.NodeGetattrer)((*runDir)(nil))
)

func (n *runDir) attr(a *fuse.Attr) {
	a.Mode = n.f.mode.dir
	a.Nlink = 3
	n.f.owner(&a.Uid, &a.Gid)
	setTimes(a, n.created)
}

func (n *runDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

// info returns the run as it is now; ENOENT when it was removed (or removed
// and recorded again: a different run behind the same name).
func (n *runDir) info() (index.RunInfo, syscall.Errno) {
	ri, err := n.f.src.Run(n.name)
	if err != nil {
		return index.RunInfo{}, n.f.fail(nil, "lookup", n.name, 0, 0, err)
	}
	if ri.ID != n.id {
		return index.RunInfo{}, syscall.ENOENT
	}
	return ri, 0
}

// checkpointStats returns the commit record of checkpoint i (cached: a
// committed checkpoint never changes). The interval part of the result is
// not cached; callers use only .Checkpoint.
func (n *runDir) checkpointStats(i int) (index.CheckpointStats, error) {
	n.mu.Lock()
	st, ok := n.mu.stats[i]
	n.mu.Unlock()
	if ok {
		return st.Checkpoint, nil
	}
	st, err := n.f.src.IntervalStats(n.name, i)
	if err != nil {
		return index.CheckpointStats{}, err
	}
	n.mu.Lock()
	if n.mu.stats == nil {
		n.mu.stats = map[int]index.IntervalStats{}
	}
	n.mu.stats[i] = st
	n.mu.Unlock()
	return st.Checkpoint, nil
}

func (n *runDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ri, e := n.info()
	if e != 0 {
		return nil, e
	}
	switch name {
	case "full":
		ch := &fullDir{f: n.f, run: n}
		ch.attr(&out.Attr)
		return n.NewInode(ctx, ch, gofs.StableAttr{Mode: syscall.S_IFDIR, Ino: ino(ri.ID, kindFullDir, 0)}), 0
	case "run.json":
		ch := &contentFile{f: n.f, name: n.name + "/run.json", dynamic: true, mtime: ri.Created, load: n.runJSON}
		if e := ch.attr(&out.Attr); e != 0 {
			return nil, e
		}
		out.SetAttrTimeout(dynamicTimeout)
		return n.NewInode(ctx, ch, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindRunJSON, 0)}), 0
	case replayLogName:
		return n.lookupReplayLog(ctx, ino(ri.ID, kindReplayLog, 0), out)
	}
	i, ext, ok := parseEntry(name)
	if !ok || i >= ri.Checkpoints {
		return nil, syscall.ENOENT
	}
	cs, err := n.checkpointStats(i)
	if err != nil {
		return nil, n.f.fail(nil, "lookup", n.name+"/"+name, 0, 0, err)
	}
	var (
		node gofs.InodeEmbedder
		kind nodeKind
	)
	switch ext {
	case "ram":
		if i >= ri.Intervals {
			return nil, syscall.ENOENT
		}
		r := &ramFile{f: n.f, run: ri, i: i, sparse: true, mtime: cs.CommittedAt}
		node, kind = r, kindSparse
	case "ws":
		if i >= ri.Intervals {
			return nil, syscall.ENOENT
		}
		node, kind = &contentFile{f: n.f, name: n.name + "/" + name, mtime: cs.CommittedAt, load: func() ([]byte, error) {
			// From the checkpoint's handle, which <i>.ram shares.
			ck := n.f.acquire(ri, i)
			defer n.f.release(ck)
			_, bm, err := n.f.wsExtents(ck)
			if err != nil {
				return nil, err
			}
			return []byte(index.FormatList(bm)), nil
		}}, kindWS
	case "json":
		node, kind = &contentFile{f: n.f, name: n.name + "/" + name, dynamic: true, mtime: cs.CommittedAt,
			load: func() ([]byte, error) { return n.intervalJSON(ri.ID, i) }}, kindJSON
	case "dev":
		if cs.DeviceStateBytes == 0 {
			return nil, syscall.ENOENT
		}
		node, kind = &contentFile{f: n.f, name: n.name + "/" + name, mtime: cs.CommittedAt, size: int64(cs.DeviceStateBytes),
			load: func() ([]byte, error) { return n.f.src.DeviceState(n.name, i) }}, kindDev
	default:
		return nil, syscall.ENOENT
	}
	if e := node.(entryAttrer).entryAttr(&out.Attr); e != 0 {
		return nil, e
	}
	if kind == kindJSON {
		out.SetAttrTimeout(dynamicTimeout)
	}
	return n.NewInode(ctx, node, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(ri.ID, kind, i)}), 0
}

// entryAttrer fills the attributes of a node for its Lookup.
type entryAttrer interface {
	entryAttr(a *fuse.Attr) syscall.Errno
}

func (n *runDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ri, e := n.info()
	if e != 0 {
		return nil, e
	}
	ents := []fuse.DirEntry{
		{Name: "full", Mode: syscall.S_IFDIR, Ino: ino(ri.ID, kindFullDir, 0)},
		{Name: "run.json", Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindRunJSON, 0)},
	}
	if has, err := n.hasReplayLog(); err != nil {
		return nil, n.f.fail(nil, "readdir", n.name, 0, 0, err)
	} else if has {
		ents = append(ents, fuse.DirEntry{Name: replayLogName, Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindReplayLog, 0)})
	}
	for i := 0; i < ri.Checkpoints && i <= maxInterval; i++ {
		cs, err := n.checkpointStats(i)
		if err != nil {
			return nil, n.f.fail(nil, "readdir", n.name, 0, 0, err)
		}
		s := strconv.Itoa(i)
		if cs.DeviceStateBytes > 0 {
			ents = append(ents, fuse.DirEntry{Name: s + ".dev", Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindDev, i)})
		}
		ents = append(ents, fuse.DirEntry{Name: s + ".json", Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindJSON, i)})
		if i < ri.Intervals {
			ents = append(ents,
				fuse.DirEntry{Name: s + ".ram", Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindSparse, i)},
				fuse.DirEntry{Name: s + ".ws", Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindWS, i)})
		}
	}
	return gofs.NewListDirStream(ents), 0
}

// runJSON is the content of run.json.
func (n *runDir) runJSON() ([]byte, error) {
	ri, err := n.f.src.Run(n.name)
	if err != nil {
		return nil, err
	}
	if ri.ID != n.id {
		return nil, index.ErrRunNotFound
	}
	ri.PageSize = max(ri.PageSize, pageSize)
	// run.json is the run's RunInfo without the store's internal ID.
	return json.MarshalIndent(struct {
		index.RunInfo
		ID *index.RunID `json:"id,omitempty"` // hides RunInfo's
	}{RunInfo: ri}, "", "  ")
}

// intervalJSON is the content of <i>.json: the store's interval statistics
// and this mount's counters for the interval.
func (n *runDir) intervalJSON(id index.RunID, i int) ([]byte, error) {
	ri, err := n.f.src.Run(n.name)
	if err != nil {
		return nil, err
	}
	if ri.ID != id {
		return nil, index.ErrRunNotFound
	}
	st, err := n.f.src.IntervalStats(n.name, i)
	if err != nil {
		return nil, err
	}
	// Working sets are committed in interval order: W_i is known once
	// the run has more than i of them.
	wsKnown := i < ri.Intervals
	return json.MarshalIndent(struct {
		index.IntervalStats
		WorkingSetKnown bool          `json:"ws_known"`
		Mount           MountCounters `json:"mount"`
	}{st, wsKnown, n.f.counters(ckptKey{id, i}).snapshot()}, "", "  ")
}

// fullDir is MNT/<run>/full.
type fullDir struct {
	gofs.Inode
	readOnlyDir
	f   *fsys
	run *runDir
}

var (
	_ = (gofs.NodeLookuper)((*fullDir)(nil))
	_ = (gofs.NodeReaddirer)((*fullDir)(nil))
	_ = (gofs.NodeGetattrer)((*fullDir)(nil))
)

func (n *fullDir) attr(a *fuse.Attr) {
	a.Mode = n.f.mode.dir
	a.Nlink = 2
	n.f.owner(&a.Uid, &a.Gid)
	setTimes(a, n.run.created)
}

func (n *fullDir) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.attr(&out.Attr)
	return 0
}

func (n *fullDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ri, e := n.run.info()
	if e != 0 {
		return nil, e
	}
	i, ext, ok := parseEntry(name)
	if !ok || ext != "ram" || i >= ri.Checkpoints {
		return nil, syscall.ENOENT
	}
	cs, err := n.run.checkpointStats(i)
	if err != nil {
		return nil, n.f.fail(nil, "lookup", ri.Name+"/full/"+name, 0, 0, err)
	}
	ch := &ramFile{f: n.f, run: ri, i: i, mtime: cs.CommittedAt}
	if e := ch.entryAttr(&out.Attr); e != 0 {
		return nil, e
	}
	return n.NewInode(ctx, ch, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindFull, i)}), 0
}

func (n *fullDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	ri, e := n.run.info()
	if e != 0 {
		return nil, e
	}
	ents := make([]fuse.DirEntry, 0, ri.Checkpoints)
	for i := 0; i < ri.Checkpoints && i <= maxInterval; i++ {
		ents = append(ents, fuse.DirEntry{Name: strconv.Itoa(i) + ".ram", Mode: syscall.S_IFREG, Ino: ino(ri.ID, kindFull, i)})
	}
	return gofs.NewListDirStream(ents), 0
}

// contentFile is a small file whose bytes are computed whole: <i>.ws and
// <i>.dev (immutable, cached by the kernel) and run.json, <i>.json, .status
// (dynamic: direct I/O, content taken at open).
type contentFile struct {
	gofs.Inode
	readOnlyNode
	f       *fsys
	name    string
	mtime   time.Time
	dynamic bool
	size    int64 // known size of an immutable file, or 0 to compute it
	load    func() ([]byte, error)

	once sync.Once
	data []byte
	err  error
}

var (
	_ = (gofs.NodeGetattrer)((*contentFile)(nil))
	_ = (gofs.NodeOpener)((*contentFile)(nil))
	_ = (gofs.NodeReader)((*contentFile)(nil))
)

// content returns the file's bytes: once for an immutable file, fresh for a
// dynamic one.
func (n *contentFile) content() ([]byte, error) {
	if n.dynamic {
		return n.load()
	}
	n.once.Do(func() { n.data, n.err = n.load() })
	return n.data, n.err
}

func (n *contentFile) attr(a *fuse.Attr) syscall.Errno {
	a.Mode = n.f.mode.file
	a.Nlink = 1
	n.f.owner(&a.Uid, &a.Gid)
	setTimes(a, n.mtime)
	if n.size > 0 {
		a.Size = uint64(n.size)
		return 0
	}
	b, err := n.content()
	if err != nil {
		return n.f.fail(nil, "getattr", n.name, 0, 0, err)
	}
	a.Size = uint64(len(b))
	return 0
}

func (n *contentFile) entryAttr(a *fuse.Attr) syscall.Errno { return n.attr(a) }

func (n *contentFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if n.dynamic {
		out.SetTimeout(dynamicTimeout)
	}
	return n.attr(&out.Attr)
}

// contentHandle is an open content file: the bytes as of open.
type contentHandle struct{ data []byte }

func (n *contentFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	b, err := n.content()
	if err != nil {
		return nil, 0, n.f.fail(nil, "open", n.name, 0, 0, err)
	}
	if n.dynamic {
		return &contentHandle{b}, fuse.FOPEN_DIRECT_IO, 0
	}
	return &contentHandle{b}, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *contentFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*contentHandle)
	if !ok {
		return nil, syscall.EBADF
	}
	if off >= int64(len(h.data)) {
		return fuse.ReadResultData(nil), 0
	}
	return fuse.ReadResultData(h.data[off:min(int64(len(h.data)), off+int64(len(dest)))]), 0
}
