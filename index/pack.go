package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/cockroachdb/pebble/v2"

	"github.com/ckptfs/ckptfs/index/rawfmt"
)

// A working-set pack holds the frames of W_i at checkpoint i contiguously,
// in pfn order: the sparse checkpoint of interval i as one sequential run
// of large values. It is derived data. The frame versions stay the truth;
// a pack only lets a replay load W_i with a few large reads instead of
// one 64 KiB block read per scattered run of frames (a working set in runs
// of 32 frames needed about 3x its size in blocks, read at random, 200-300
// ms for 51 MiB cold here). The price is W_i's size again on disk and one
// read of W_i to build it, so packs are built after the fact: PackRun when
// a run is finished, or PackInterval beside a recording (kvmrec's
// PackLive), never inside a commit.
//
// Frame r of W_i (in pfn order, counting from 0) is slot r%packFrames of
// chunk r/packFrames. A pack is ingested as one table, so it exists whole
// or not at all.

// packFrames is the number of frames of one pack chunk (512 KiB): one table
// block, so a pack is read in large blocks, in order.
const packFrames = 128

// packSegment is how many frames of W_i a pack build holds in memory at
// once (64 MiB); a multiple of packFrames.
const packSegment = 512 * packFrames

// PackStats describes the packs PackRun built.
type PackStats struct {
	Empty     int    `json:"empty"`     // intervals with an empty W_i: nothing to pack
	Intervals int    `json:"intervals"` // packs built now
	Frames    uint64 `json:"frames"`    // frames written into them
	Present   int    `json:"present"`   // intervals that already had a pack
}

// PackRun builds the missing working-set packs of run name, in interval
// order. It is idempotent and safe to call while the run is being recorded
// (only intervals whose W is known are packed) and concurrently with itself.
func (s *Store) PackRun(ctx context.Context, name string) (PackStats, error) {
	var st PackStats
	ps := s.startPacking(name)
	defer s.endPacking(name)
	ri, err := s.Run(name)
	if err != nil {
		return st, err
	}
	for i := 0; i < ri.Intervals; i++ {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		n, built, err := s.buildPack(ctx, ps, ri, i)
		switch {
		case err != nil:
			return st, fmt.Errorf("packing interval %d of %q: %w", i, name, err)
		case built:
			st.Intervals++
			st.Frames += n
		case n == 0:
			st.Empty++
		default:
			st.Present++
		}
	}
	return st, nil
}

// PackInterval builds the pack of interval i of run name unless it exists
// or W_i is empty; it returns the frames packed. The recorder calls it as
// each W_i becomes known (kvmrec Config.PackLive).
func (s *Store) PackInterval(ctx context.Context, name string, i int) (uint64, error) {
	ps := s.startPacking(name)
	defer s.endPacking(name)
	ri, err := s.Run(name)
	if err != nil {
		return 0, err
	}
	if i < 0 || i >= ri.Intervals {
		return 0, fmt.Errorf("%w: interval %d of %q", ErrNoWorkingSet, i, name)
	}
	n, built, err := s.buildPack(ctx, ps, ri, i)
	if err != nil {
		return 0, fmt.Errorf("packing interval %d of %q: %w", i, name, err)
	}
	if !built {
		return 0, nil
	}
	return n, nil
}

// packState is a run whose packs are being built.
type packState struct {
	users int
	mu    sync.Mutex // serialises the builders of the run's packs
}

// startPacking registers a builder of name's packs before the run is
// looked up: DeleteRun refuses a run being packed, so a pack is never
// ingested after its run is gone.
func (s *Store) startPacking(name string) *packState {
	s.mu.Lock()
	defer s.mu.Unlock()
	ps := s.mu.packing[name]
	if ps == nil {
		ps = &packState{}
		s.mu.packing[name] = ps
	}
	ps.users++
	return ps
}

func (s *Store) endPacking(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ps := s.mu.packing[name]; ps != nil {
		if ps.users--; ps.users == 0 {
			delete(s.mu.packing, name)
		}
	}
}

// buildPack writes the pack of interval i unless it exists. It returns
// |W_i|, and whether it built the pack now.
func (s *Store) buildPack(ctx context.Context, ps *packState, ri RunInfo, i int) (uint64, bool, error) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ws, err := s.workingSet(ri.ID, ri.Name, i)
	if err != nil {
		return 0, false, err
	}
	if ok, err := s.hasPack(ri.ID, uint32(i)); err != nil || ok || ws.IsEmpty() {
		return ws.GetCardinality(), false, err
	}
	c, err := s.OpenCheckpoint(ri.Name, i)
	if err != nil {
		return 0, false, err
	}
	defer c.Close()
	t, path, err := s.newTable(ri.ID, uint32(i), "pack")
	if err != nil {
		return 0, false, err
	}
	defer s.fs.Remove(path)
	// W_i is gathered a segment at a time, each segment's frames read in
	// blob-key order (sequential in each source table; pfn order would
	// seek for every run of W), then written out as chunks in pfn order.
	werr := func() error {
		total := ws.GetCardinality()
		seg := make([]byte, min(total, packSegment)*PageSize)
		pfns := ws.ToArray()
		for base := uint64(0); base < total; base += packSegment {
			n := min(total-base, packSegment)
			part := roaring.New()
			part.AddMany(pfns[base : base+n])
			rank := func(pfn uint64) uint64 {
				return uint64(ws.Rank(uint32(pfn))) - 1 - base
			}
			if err := c.forEachFrame(ctx, part, 2, func(_ int, pfn uint64, data []byte) error {
				r := rank(pfn)
				copy(seg[r*PageSize:(r+1)*PageSize], data)
				return nil
			}); err != nil {
				return err
			}
			for k := uint64(0); k < n; k += packFrames {
				m := min(n-k, packFrames)
				frames := seg[k*PageSize : (k+m)*PageSize]
				val := appendPackValue(make([]byte, 0, m*frameValueLen), frames)
				if err := t.Set(appendPackKey(nil, ri.ID, uint32(i), uint32((base+k)/packFrames)), val); err != nil {
					return fmt.Errorf("writing pack table: %w", err)
				}
			}
		}
		return nil
	}()
	if werr != nil {
		_ = t.Close()
		return 0, false, werr
	}
	if err := t.Close(); err != nil {
		return 0, false, fmt.Errorf("finishing pack table: %w", err)
	}
	if err := s.db.Ingest(ctx, []string{path}); err != nil {
		return 0, false, fmt.Errorf("ingesting pack: %w", err)
	}
	s.generation.Add(1)
	return ws.GetCardinality(), true, nil
}

func (s *Store) hasPack(id RunID, i uint32) (bool, error) {
	key := appendPackKey(nil, id, i, 0)
	_, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, wrapRead(err, keyString(key))
	}
	closer.Close()
	return true, nil
}

// HasPack tells whether interval i of run name has a working-set pack.
func (s *Store) HasPack(name string, i int) (bool, error) {
	id, err := s.runID(name)
	if err != nil {
		return false, err
	}
	return s.hasPack(id, uint32(i))
}

// packView is what a Checkpoint knows about its interval's pack.
type packView struct {
	has    bool   // the pack exists
	gen    uint64 // store generation when this was looked up
	broken bool   // the pack failed a read: this handle no longer uses it
}

// packed returns W_i when interval i (this checkpoint's) has a pack that
// this handle uses. A missing pack is looked up again once the store's
// generation moves on, so a long-lived handle finds a pack built after it
// was opened.
func (c *Checkpoint) packed() *roaring.Bitmap {
	gen := c.s.generation.Load()
	c.packMu.Lock()
	if c.pack == nil || (!c.pack.broken && !c.pack.has && c.pack.gen != gen) {
		v := &packView{gen: gen}
		v.has, _ = c.s.hasPack(c.run.ID, c.index)
		c.pack = v
	}
	has := c.pack.has && !c.pack.broken
	c.packMu.Unlock()
	if !has {
		return nil
	}
	ws, err := c.workingSet()
	if err != nil {
		return nil
	}
	return ws
}

// dropPack stops this handle from using its pack after err, logging it
// once: the frame versions serve every later read, so a damaged pack costs
// one line and speed, not a line per read.
func (c *Checkpoint) dropPack(err error) {
	c.packMu.Lock()
	first := c.pack == nil || !c.pack.broken
	c.pack = &packView{broken: true}
	c.packMu.Unlock()
	if first {
		c.s.log.Warn("store: working-set pack unreadable, reading frame versions", "run", c.run.Name, "checkpoint", c.index, "err", err)
	}
}

// readPacked serves ReadFrames from the pack when every frame asked for is
// in W_i; ok is false when the pack cannot serve the range.
func (c *Checkpoint) readPacked(first uint64, dst []byte) (ok bool, err error) {
	n := uint64(len(dst) / PageSize)
	if n == 0 || first+n-1 > 1<<32-1 {
		return false, nil
	}
	ws := c.packed()
	if ws == nil || !ws.Contains(uint32(first)) {
		return false, nil
	}
	r0 := ws.Rank(uint32(first)) - 1
	if ws.Rank(uint32(first+n-1))-1-r0 != n-1 {
		return false, nil // a gap: not all of the range is in W_i
	}
	if err := c.readRanks(ws, r0, dst); err != nil {
		return false, err
	}
	return true, nil
}

// readRanks reads the frames of W_i (ws) of ranks r0, r0+1, ... (their
// places in W_i in pfn order) from the pack into dst.
func (c *Checkpoint) readRanks(ws *roaring.Bitmap, r0 uint64, dst []byte) error {
	n := uint64(len(dst) / PageSize)
	it, err := c.getIter(kindPack)
	if err != nil {
		return wrapRead(err, "iterator")
	}
	defer c.putIter(kindPack, it)
	total := ws.GetCardinality()
	if r0+n > total {
		return fmt.Errorf("%w: frames %d..%d of a working set of %d", ErrBadInput, r0, r0+n, total)
	}
	key := make([]byte, 0, packKeyLen)
	for k := uint64(0); k < n; {
		r := r0 + k
		chunkNo, slot := uint32(r/packFrames), r%packFrames
		key = appendPackKey(key[:0], c.run.ID, c.index, chunkNo)
		v, err := valueAt(it, key, "is missing from a pack")
		if err != nil {
			return err
		}
		want := min(uint64(packFrames), total-uint64(chunkNo)*packFrames)
		pv, err := decodePackValue(v)
		if err == nil && uint64(pv.frames()) != want {
			err = fmt.Errorf("has %d frames, want %d", pv.frames(), want)
		}
		if err != nil {
			return corruptf("%s %v", keyString(key), err)
		}
		for ; slot < want && k < n; slot, k = slot+1, k+1 {
			f, err := pv.frame(int(slot))
			if err != nil {
				return corruptf("%s: %v", keyString(key), err)
			}
			copy(dst[k*PageSize:], f)
		}
	}
	return nil
}

// verifyPacks checks every pack of run ri: its interval has a working set,
// its chunks are numbered without gaps and hold |W_i| frames in all, every
// frame matches its checksum, and every frame equals what the frame versions
// give for that pfn at checkpoint i.
func (s *Store) verifyPacks(ctx context.Context, ri RunInfo, rep *VerifyReport) error {
	type chunkInfo struct{ frames int }
	packs := map[uint32][]chunkInfo{}
	var bad []string
	if err := s.scanKeys(kindPack, ri.ID, ri.Name, func(k, v []byte) {
		_, i, c, ok := decodePackKey(k)
		if !ok {
			bad = append(bad, fmt.Sprintf("malformed key %s", keyString(k)))
			return
		}
		pv, err := decodePackValue(v)
		n := pv.frames()
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s %v", recordWords(k, func(RunID) string { return ri.Name }), err))
		}
		if int(c) != len(packs[i]) {
			bad = append(bad, fmt.Sprintf("%s: chunks of the pack are not contiguous", recordWords(k, func(RunID) string { return ri.Name })))
		}
		packs[i] = append(packs[i], chunkInfo{n})
	}); err != nil {
		return err
	}
	for _, b := range bad {
		rep.add("run %q: %s", ri.Name, b)
	}
	for i, chunks := range packs {
		if err := ctx.Err(); err != nil {
			return err
		}
		ws, err := s.workingSet(ri.ID, ri.Name, int(i))
		if err != nil {
			rep.add("run %q: pack of interval %d without a working set: %v", ri.Name, i, err)
			continue
		}
		total := 0
		for _, c := range chunks {
			total += c.frames
		}
		if uint64(total) != ws.GetCardinality() {
			rep.add("run %q: pack of interval %d holds %d frames, W has %d", ri.Name, i, total, ws.GetCardinality())
			continue
		}
		rep.Packs++
		if err := s.comparePack(ri, int(i), ws, rep); err != nil {
			return err
		}
	}
	return nil
}

// comparePack reads W_i once through the pack and once through the frame
// versions and reports every frame that differs.
func (s *Store) comparePack(ri RunInfo, i int, ws *roaring.Bitmap, rep *VerifyReport) error {
	c, err := s.OpenCheckpoint(ri.Name, i)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.resolve(); err != nil {
		return err
	}
	packedBuf, plainBuf := make([]byte, packFrames*PageSize), make([]byte, packFrames*PageSize)
	var ferr error
	rawfmt.EachRun(ws, func(start, end uint64) bool {
		for p := start; p < end; p += packFrames {
			n := min(end-p, packFrames) * PageSize
			packed, plain := packedBuf[:n], plainBuf[:n]
			ok, err := c.readPacked(p, packed)
			if err != nil || !ok {
				rep.add("run %q: pack of interval %d unreadable at pfn %d: %v", ri.Name, i, p, err)
				return true
			}
			if err := c.readVersions(p, plain); err != nil {
				ferr = err
				return false
			}
			for k := uint64(0); k < n/PageSize; k++ {
				if !bytes.Equal(packed[k*PageSize:(k+1)*PageSize], plain[k*PageSize:(k+1)*PageSize]) {
					rep.add("run %q: pack of interval %d differs from the frame versions at pfn %d", ri.Name, i, p+k)
				}
			}
		}
		return true
	})
	return ferr
}
