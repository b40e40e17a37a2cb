package index

import (
	"bytes"
	"cmp"
	"context"
	"slices"

	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"golang.org/x/sync/errgroup"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/zeebo/xxh3"
)

// Checkpoint is a read handle on one committed checkpoint of a run. Its data
// never changes: committed checkpoints are immutable. It is safe for
// concurrent use. Close it to release its iterators.
type Checkpoint struct {
	s     *Store
	run   RunInfo
	index uint32
	// Pools of iterators over the run's blobs and over its versions. Narrow
	// bounds keep each seek off the other kind's tables.
	blobIters, versionIters, packIters chan *pebble.Iterator
	// poolMu orders putIter against Close: after Close, iterators are
	// closed instead of pooled, so a read racing with Close cannot leave one
	// that Pebble would call leaked.
	poolMu struct {
		sync.Mutex
		closed bool
	}

	packMu sync.Mutex
	pack   *packView
	wsc    wsCache // W_i (wsread.go)

	resolveOnce sync.Once
	refs        []uint64 // per pfn: 0 = zero frame, else (ref interval+1)<<40 | ref pfn
	dataFrames  *roaring.Bitmap
	resolveErr  error
}

const refPfnBits = 40

// OpenCheckpoint returns a handle on checkpoint i of run name.
func (s *Store) OpenCheckpoint(name string, i int) (*Checkpoint, error) {
	ri, err := s.Run(name)
	if err != nil {
		return nil, err
	}
	if i < 0 || i >= ri.Checkpoints {
		return nil, fmt.Errorf("%w: run %q has checkpoints 0..%d, not %d", ErrCheckpointMissing, name, ri.Checkpoints-1, i)
	}
	c := &Checkpoint{s: s, run: ri, index: uint32(i),
		blobIters: make(chan *pebble.Iterator, 32), versionIters: make(chan *pebble.Iterator, 8),
		packIters: make(chan *pebble.Iterator, 8)}
	s.mu.Lock()
	s.mu.checkpoints[c] = struct{}{}
	s.mu.Unlock()
	return c, nil
}

// Size is the guest RAM size in bytes.
func (c *Checkpoint) Size() uint64 { return c.run.RAMSize }

func (c *Checkpoint) pool(kind keyKind) chan *pebble.Iterator {
	switch kind {
	case kindBlob:
		return c.blobIters
	case kindPack:
		return c.packIters
	}
	return c.versionIters
}

// getIter returns an iterator over the run's keys of kind (blobs or versions).
func (c *Checkpoint) getIter(kind keyKind) (*pebble.Iterator, error) {
	select {
	case it := <-c.pool(kind):
		return it, nil
	default:
	}
	return c.s.db.NewIter(&pebble.IterOptions{
		LowerBound: appendRunKey(nil, kind, c.run.ID),
		UpperBound: runPrefixEnd(kind, c.run.ID),
	})
}

func (c *Checkpoint) putIter(kind keyKind, it *pebble.Iterator) {
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	if !c.poolMu.closed {
		select {
		case c.pool(kind) <- it:
			return
		default:
		}
	}
	it.Close()
}

// Close releases the handle. Reads after Close still work, each with its
// own short-lived iterator.
func (c *Checkpoint) Close() error {
	c.poolMu.Lock()
	defer c.poolMu.Unlock()
	c.poolMu.closed = true
	c.s.mu.Lock()
	delete(c.s.mu.checkpoints, c)
	c.s.mu.Unlock()
	for _, p := range []chan *pebble.Iterator{c.blobIters, c.versionIters, c.packIters} {
	drain:
		for {
			select {
			case it := <-p:
				it.Close()
			default:
				break drain
			}
		}
	}
	return nil
}

// removed returns an ErrRunRemoved error once the handle's run was removed.
func (c *Checkpoint) removed() error {
	if _, gone := c.s.removed.Load(c.run.ID); gone {
		return fmt.Errorf("%w: run %q was removed while checkpoint %d was open", ErrRunRemoved, c.run.Name, c.index)
	}
	return nil
}

// readErr turns err into ErrRunRemoved when the run was removed meanwhile:
// its frames are then missing, which is not damage.
func (c *Checkpoint) readErr(err error) error {
	if err != nil {
		if rerr := c.removed(); rerr != nil {
			return rerr
		}
	}
	return err
}

// seekVersion positions it on the newest version of pfn at or before the
// checkpoint and returns its value, or ok=false when pfn has none (zero).
func (c *Checkpoint) seekVersion(it *pebble.Iterator, pfn uint64) (kind versionKind, ref blobRef, ok bool, err error) {
	key := appendVersionKey(make([]byte, 0, versionKeyLen), c.run.ID, pfn, c.index)
	if !it.SeekGE(key) {
		return 0, blobRef{}, false, wrapRead(it.Error(), "versions")
	}
	run, p, _, valid := decodeVersionKey(it.Key())
	if !valid || run != c.run.ID || p != pfn {
		return 0, blobRef{}, false, nil
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return 0, blobRef{}, false, wrapRead(err, keyString(it.Key()))
	}
	k, ri, rp, err := decodeVersionValue(v)
	if err != nil {
		return 0, blobRef{}, false, fmt.Errorf("%s: %w", keyString(it.Key()), err)
	}
	return k, blobRef{ri, rp}, true, nil
}

// valueAt moves it to key and returns its value, valid until the iterator
// moves. Reads mostly want the key right after the last one (the next blob,
// the next pack chunk): a Next is far cheaper than a seek through every
// level. A key that is not there is corruption: "<key> <missing>".
func valueAt(it *pebble.Iterator, key []byte, missing string) ([]byte, error) {
	found := false
	if it.Valid() {
		switch cmp := bytes.Compare(it.Key(), key); {
		case cmp == 0:
			found = true
		case cmp < 0:
			found = it.Next() && equalKey(it.Key(), key)
		}
	}
	if !found && (!it.SeekGE(key) || !equalKey(it.Key(), key)) {
		if err := it.Error(); err != nil {
			return nil, wrapRead(err, keyString(key))
		}
		return nil, corruptf("%s %s", keyString(key), missing)
	}
	v, err := it.ValueAndErr()
	if err != nil {
		return nil, wrapRead(err, keyString(key))
	}
	return v, nil
}

// readBlob copies the blob ref into dst after checking its checksum.
func (c *Checkpoint) readBlob(it *pebble.Iterator, ref blobRef, dst []byte) error {
	v, err := c.blobValue(it, ref)
	if err == nil {
		copy(dst, v)
	}
	return err
}

// blobValue returns the checked frame bytes of blob ref. They are valid
// until the iterator moves.
func (c *Checkpoint) blobValue(it *pebble.Iterator, ref blobRef) ([]byte, error) {
	key := appendBlobKey(make([]byte, 0, blobKeyLen), c.run.ID, ref.interval, ref.pfn)
	v, err := valueAt(it, key, "is referenced but missing")
	if err != nil {
		return nil, err
	}
	frame, err := decodeFrameValue(v)
	if err != nil {
		return nil, corruptf("%s %v", keyString(key), err)
	}
	return frame, nil
}

func equalKey(a, b []byte) bool { return string(a) == string(b) }

// readFrame reads pfn into dst (PageSize bytes). It resolves the newest
// version at or before the checkpoint with one seek, without building the
// whole frame map.
func (c *Checkpoint) readFrame(pfn uint64, dst []byte) error {
	if err := c.removed(); err != nil {
		return err
	}
	return c.readErr(c.seekFrame(pfn, dst))
}

func (c *Checkpoint) seekFrame(pfn uint64, dst []byte) error {
	if pfn >= c.run.Frames || len(dst) < PageSize {
		return fmt.Errorf("%w: read of pfn %d into %d bytes (%d frames of %d bytes)", ErrBadInput, pfn, len(dst), c.run.Frames, PageSize)
	}
	vit, err := c.getIter(kindVersion)
	if err != nil {
		return wrapRead(err, "iterator")
	}
	kind, ref, ok, err := c.seekVersion(vit, pfn)
	c.putIter(kindVersion, vit)
	if err != nil {
		return err
	}
	if !ok || kind == versionZero {
		clear(dst[:PageSize])
		return nil
	}
	bit, err := c.getIter(kindBlob)
	if err != nil {
		return wrapRead(err, "iterator")
	}
	defer c.putIter(kindBlob, bit)
	return c.readBlob(bit, ref, dst)
}

// resolve builds the per-pfn map of the checkpoint once.
func (c *Checkpoint) resolve() error {
	c.resolveOnce.Do(func() {
		c.refs = make([]uint64, c.run.Frames)
		c.dataFrames = roaring.New()
		it, err := c.getIter(kindVersion)
		if err != nil {
			c.resolveErr = wrapRead(err, "iterator")
			return
		}
		defer c.putIter(kindVersion, it)
		key := make([]byte, 0, versionKeyLen)
		pfn := uint64(0)
		for pfn < c.run.Frames {
			key = appendVersionKey(key[:0], c.run.ID, pfn, c.index)
			if !it.SeekGE(key) {
				c.resolveErr = wrapRead(it.Error(), "versions")
				return
			}
			run, p, _, ok := decodeVersionKey(it.Key())
			if !ok || run != c.run.ID {
				break
			}
			if p != pfn { // pfn has no version at or before the checkpoint
				pfn = p
				continue
			}
			v, err := it.ValueAndErr()
			if err != nil {
				c.resolveErr = wrapRead(err, keyString(it.Key()))
				return
			}
			kind, ri, rp, err := decodeVersionValue(v)
			if err != nil {
				c.resolveErr = fmt.Errorf("%s: %w", keyString(it.Key()), err)
				return
			}
			if kind == versionBlob {
				if ri > c.index || rp >= c.run.Frames {
					c.resolveErr = corruptf("%s refers to blob %d/%d", keyString(it.Key()), ri, rp)
					return
				}
				c.refs[pfn] = uint64(ri+1)<<refPfnBits | rp
				c.dataFrames.Add(uint32(pfn))
			}
			pfn++
		}
	})
	return c.resolveErr
}

// DataFrames returns the frames that are not all zeros. Do not modify it.
func (c *Checkpoint) DataFrames() (*roaring.Bitmap, error) {
	if err := c.removed(); err != nil {
		return nil, err
	}
	if err := c.resolve(); err != nil {
		return nil, c.readErr(err)
	}
	return c.dataFrames, nil
}

// ReadFrames reads the contiguous frames first.. into dst, whose length is a
// multiple of PageSize. It builds the frame map on first use.
func (c *Checkpoint) ReadFrames(first uint64, dst []byte) error {
	if err := c.removed(); err != nil {
		return err
	}
	return c.readErr(c.readFrames(first, dst))
}

func (c *Checkpoint) readFrames(first uint64, dst []byte) error {
	if len(dst)%PageSize != 0 || first+uint64(len(dst)/PageSize) > c.run.Frames {
		return fmt.Errorf("%w: read of %d bytes at pfn %d beyond %d frames", ErrBadInput, len(dst), first, c.run.Frames)
	}
	// A range inside W_i comes from the interval's pack when it has one.
	switch ok, err := c.readPacked(first, dst); {
	case ok:
		return nil
	case err != nil:
		if rerr := c.removed(); rerr != nil {
			return rerr
		}
		// The frame versions still hold the truth: serve from them.
		c.dropPack(err)
	}
	return c.readVersions(first, dst)
}

// readVersions is ReadFrames from the frame versions alone.
func (c *Checkpoint) readVersions(first uint64, dst []byte) error {
	if err := c.resolve(); err != nil {
		return err
	}
	// One iterator per source interval: the frames of a range come from a
	// few checkpoints, and each stream then advances with Next, not seeks.
	type stream struct {
		interval uint32
		it       *pebble.Iterator
	}
	var streams []stream
	defer func() {
		for _, st := range streams {
			c.putIter(kindBlob, st.it)
		}
	}()
	for i := 0; i < len(dst)/PageSize; i++ {
		out := dst[i*PageSize : (i+1)*PageSize]
		r := c.refs[first+uint64(i)]
		if r == 0 {
			clear(out)
			continue
		}
		ref := decodeRef(r)
		var it *pebble.Iterator
		for _, st := range streams {
			if st.interval == ref.interval {
				it = st.it
				break
			}
		}
		if it == nil {
			var err error
			if it, err = c.getIter(kindBlob); err != nil {
				return wrapRead(err, "iterator")
			}
			streams = append(streams, stream{ref.interval, it})
		}
		if err := c.readBlob(it, ref, out); err != nil {
			return err
		}
	}
	return nil
}

func decodeRef(r uint64) blobRef {
	return blobRef{interval: uint32(r>>refPfnBits) - 1, pfn: r & (1<<refPfnBits - 1)}
}

// forEachFrame calls fn for every pfn of frames with the frame's content;
// zero frames get zeroFrame. The frames are split into workers contiguous
// shares in blob-key order, each read sequentially by its own goroutine and
// iterator, so fn is called concurrently with distinct worker numbers; within
// one worker, calls are in blob-key order. fn must not keep data.
func (c *Checkpoint) forEachFrame(ctx context.Context, frames *roaring.Bitmap, workers int, fn func(worker int, pfn uint64, data []byte) error) error {
	if err := c.removed(); err != nil {
		return err
	}
	if err := c.resolve(); err != nil {
		return c.readErr(err)
	}
	type item struct{ ref, pfn uint64 }
	items := make([]item, 0, frames.GetCardinality())
	fi := frames.Iterator()
	for fi.HasNext() {
		p := uint64(fi.Next())
		if p >= c.run.Frames {
			return fmt.Errorf("%w: pfn %d beyond %d frames", ErrBadInput, p, c.run.Frames)
		}
		items = append(items, item{c.refs[p], p})
	}
	slices.SortFunc(items, func(a, b item) int { return cmp.Compare(a.ref, b.ref) })
	workers = max(1, min(workers, len(items)/1024))
	g, ctx := errgroup.WithContext(ctx)
	share := (len(items) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		part := items[min(w*share, len(items)):min((w+1)*share, len(items))]
		g.Go(func() error {
			it, err := c.getIter(kindBlob)
			if err != nil {
				return wrapRead(err, "iterator")
			}
			defer c.putIter(kindBlob, it)
			for n, x := range part {
				if n%4096 == 0 && ctx.Err() != nil {
					return ctx.Err()
				}
				data := zeroFrame
				if x.ref != 0 {
					if data, err = c.blobValue(it, decodeRef(x.ref)); err != nil {
						return err
					}
				}
				if err := fn(w, x.pfn, data); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return c.readErr(g.Wait())
}

// WorkingSet returns W_i of run name: the frames interval i touched.
func (s *Store) WorkingSet(name string, i int) (*roaring.Bitmap, error) {
	id, err := s.runID(name)
	if err != nil {
		return nil, err
	}
	return s.workingSet(id, name, i)
}

func (s *Store) workingSet(id RunID, name string, i int) (*roaring.Bitmap, error) {
	if i < 0 {
		return nil, fmt.Errorf("%w: interval %d of %q", ErrNoWorkingSet, i, name)
	}
	key := appendIntervalKey(nil, kindWS, id, uint32(i))
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: interval %d of %q", ErrNoWorkingSet, i, name)
	}
	if err != nil {
		return nil, wrapRead(err, keyString(key))
	}
	defer closer.Close()
	if len(v) < wsHeaderLen || binary.LittleEndian.Uint64(v) != xxh3.Hash(v[wsHeaderLen:]) {
		return nil, corruptf("%s: checksum mismatch", keyString(key))
	}
	bm := roaring.New()
	if err := bm.UnmarshalBinary(v[wsHeaderLen:]); err != nil {
		return nil, corruptf("%s: %v", keyString(key), err)
	}
	return bm, nil
}

// CheckpointStats returns the commit record of checkpoint i.
func (s *Store) CheckpointStats(name string, i int) (CheckpointStats, error) {
	id, err := s.runID(name)
	if err != nil {
		return CheckpointStats{}, err
	}
	return s.checkpointStats(id, name, i)
}

func (s *Store) checkpointStats(id RunID, name string, i int) (CheckpointStats, error) {
	if i < 0 {
		return CheckpointStats{}, fmt.Errorf("%w: %q has no checkpoint %d", ErrCheckpointMissing, name, i)
	}
	key := appendIntervalKey(nil, kindCommit, id, uint32(i))
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return CheckpointStats{}, fmt.Errorf("%w: %q has no checkpoint %d", ErrCheckpointMissing, name, i)
	}
	if err != nil {
		return CheckpointStats{}, wrapRead(err, keyString(key))
	}
	defer closer.Close()
	var st CheckpointStats
	if err := json.Unmarshal(v, &st); err != nil {
		return CheckpointStats{}, corruptf("%s: %v", keyString(key), err)
	}
	return st, nil
}

// IntervalStats returns the stats of interval i; it needs checkpoint i+1.
func (s *Store) IntervalStats(name string, i int) (IntervalStats, error) {
	id, err := s.runID(name)
	if err != nil {
		return IntervalStats{}, err
	}
	cur, err := s.checkpointStats(id, name, i)
	if err != nil {
		return IntervalStats{}, err
	}
	out := IntervalStats{Interval: i, Checkpoint: cur, DeviceStateBytes: cur.DeviceStateBytes, ICount: cur.ICount}
	next, err := s.checkpointStats(id, name, i+1)
	if errors.Is(err, ErrCheckpointMissing) {
		return out, nil
	}
	if err != nil {
		return IntervalStats{}, err
	}
	out.WorkingSetFrames = next.WorkingSetFrames
	out.DirtyFrames = next.ChangedFrames
	out.NewFrames = next.NewFrames
	out.BytesStored = next.BytesStored
	out.DowntimeNS = next.DowntimeNS
	if out.Packed, err = s.hasPack(id, uint32(i)); err != nil {
		return IntervalStats{}, err
	}
	return out, nil
}

// DeviceState returns the device state recorded with checkpoint i.
func (s *Store) DeviceState(name string, i int) ([]byte, error) {
	id, err := s.runID(name)
	if err != nil {
		return nil, err
	}
	key := appendIntervalKey(nil, kindDevState, id, uint32(i))
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, fmt.Errorf("%w: checkpoint %d of %q", ErrNoDeviceState, i, name)
	}
	if err != nil {
		return nil, wrapRead(err, keyString(key))
	}
	defer closer.Close()
	return append([]byte(nil), v...), nil
}
