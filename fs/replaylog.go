package fs

import (
	"context"
	"io"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// ReplayLog is the record/replay log of a deterministic run as of when the
// source opened it: Size and Complete do not change, and later commits only
// append (committed bytes never change). index.ReplayLog is the real one.
type ReplayLog interface {
	// Size is the number of bytes of the log.
	Size() int64
	// Complete reports that the recording ended: the log is final.
	Complete() bool
	// ModTime is when the log last grew.
	ModTime() time.Time
	// ReadAt reads as io.ReaderAt does, io.EOF at Size.
	ReadAt(p []byte, off int64) (int, error)
}

func (x indexSource) ReplayLog(run string) (ReplayLog, error) {
	l, err := x.s.ReplayLog(run)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// replayLogFile is MNT/<run>/replay.log, present for runs that have a
// replay log. It grows while the run is recorded: its size is read afresh
// (no attribute caching, direct I/O) until the log is complete, and from
// then on it never changes and is cached like a checkpoint.
type replayLogFile struct {
	gofs.Inode
	readOnlyNode
	f   *fsys
	run *runDir

	mu  sync.Mutex
	log ReplayLog // the newest handle seen
	gen uint64    // the source's generation when log was opened
}

var (
	_ = (gofs.NodeGetattrer)((*replayLogFile)(nil))
	_ = (gofs.NodeSetattrer)((*replayLogFile)(nil))
	_ = (gofs.NodeSetxattrer)((*replayLogFile)(nil))
	_ = (gofs.NodeOpener)((*replayLogFile)(nil))
	_ = (gofs.NodeReader)((*replayLogFile)(nil))
)

const replayLogName = "replay.log"

// hasReplayLog reports whether the run has a replay log, for listing it.
func (n *runDir) hasReplayLog() (bool, error) {
	_, err := n.f.src.ReplayLog(n.name)
	if err != nil && errno(err) == syscall.ENOENT {
		return false, nil
	}
	return err == nil, err
}

func (n *runDir) lookupReplayLog(ctx context.Context, ino uint64, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	ch := &replayLogFile{f: n.f, run: n}
	l, e := ch.current()
	if e != 0 {
		return nil, e
	}
	ch.attr(l, &out.Attr)
	if !l.Complete() {
		out.SetAttrTimeout(dynamicTimeout)
	}
	return n.NewInode(ctx, ch, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: ino}), 0
}

// current returns the log as last committed: a handle is reopened when the
// source's generation changed, until the log is complete.
func (n *replayLogFile) current() (ReplayLog, syscall.Errno) {
	g := n.f.src.Generation()
	n.mu.Lock()
	l, gen := n.log, n.gen
	n.mu.Unlock()
	if l != nil && (l.Complete() || g == gen) {
		return l, 0
	}
	// The run must still be the one this node belongs to.
	if _, e := n.run.info(); e != 0 {
		return nil, e
	}
	nl, err := n.f.src.ReplayLog(n.run.name)
	if err != nil {
		return nil, n.f.fail(nil, "lookup", n.run.name+"/"+replayLogName, 0, 0, err)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// Concurrent refreshes: keep the newest, the log never shrinks.
	if n.log == nil || nl.Size() > n.log.Size() || (nl.Complete() && !n.log.Complete()) {
		n.log, n.gen = nl, g
	}
	return n.log, 0
}

func (n *replayLogFile) attr(l ReplayLog, a *fuse.Attr) {
	a.Mode = n.f.mode.file
	a.Nlink = 1
	n.f.owner(&a.Uid, &a.Gid)
	setTimes(a, l.ModTime())
	a.Size = uint64(l.Size())
	a.Blocks = (a.Size + 511) / 512
}

func (n *replayLogFile) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	l, e := n.current()
	if e != 0 {
		return e
	}
	if !l.Complete() {
		out.SetTimeout(dynamicTimeout)
	}
	n.attr(l, &out.Attr)
	return 0
}

func (n *replayLogFile) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

// Open serves a complete log through the page cache (it never changes
// again) and a growing one with direct I/O: a cached last page would keep
// the zeros past the old end of file.
func (n *replayLogFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	l, e := n.current()
	if e != 0 {
		return nil, 0, e
	}
	if l.Complete() {
		return nil, fuse.FOPEN_KEEP_CACHE, 0
	}
	return nil, fuse.FOPEN_DIRECT_IO, 0
}

func (n *replayLogFile) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	l, e := n.current()
	if e != 0 {
		return nil, e
	}
	if off >= l.Size() {
		return fuse.ReadResultData(nil), 0
	}
	got, err := l.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, n.f.fail(nil, "read", n.run.name+"/"+replayLogName, off, len(dest), err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}
