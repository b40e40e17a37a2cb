package index

import (
	"errors"
	"fmt"
	"sync"

	"github.com/RoaringBitmap/roaring/v2"
)

// Reads of a checkpoint that depend on its interval's working set: the
// sparse view of checkpoint i (W_i is data, everything else holes) and W_i
// cut into pieces for loaders that work in parallel. The handle loads W_i
// once and knows where its frames are stored (the pack, when there is one),
// so its callers need neither.

// wsCache is a handle's W_i, loaded on first use. A missing W_i is not
// kept: it becomes known when checkpoint i+1 commits, and a handle may be
// older than that.
type wsCache struct {
	mu sync.Mutex
	ws *roaring.Bitmap
}

// workingSet returns W_i, loading it once per handle.
func (c *Checkpoint) workingSet() (*roaring.Bitmap, error) {
	c.wsc.mu.Lock()
	defer c.wsc.mu.Unlock()
	if c.wsc.ws != nil {
		return c.wsc.ws, nil
	}
	ws, err := c.s.workingSet(c.run.ID, c.run.Name, int(c.index))
	if err != nil {
		return nil, err
	}
	c.wsc.ws = ws
	return ws, nil
}

// WorkingSet returns W_i of the checkpoint's interval, ErrNoWorkingSet
// while it is unknown. Do not modify it.
func (c *Checkpoint) WorkingSet() (*roaring.Bitmap, error) {
	if err := c.removed(); err != nil {
		return nil, err
	}
	ws, err := c.workingSet()
	return ws, c.readErr(err)
}

// Extent is a run of frames [Start, End).
type Extent struct{ Start, End uint64 }

// Piece is a part of W_i that one loader reads as a whole (ReadPiece):
// runs of frames in pfn order.
type Piece struct {
	Extents []Extent
	// rank is the number of frames of W_i before the piece.
	rank uint64
}

// Frames is the number of frames in the piece.
func (p Piece) Frames() uint64 {
	var n uint64
	for _, e := range p.Extents {
		n += e.End - e.Start
	}
	return n
}

// WorkingSetPieces cuts the frames of W_i inside [first, last) into pieces
// of at most frames frames each, in pfn order. When frames allows, the
// cuts fall where the store's own blocks of W_i end, so that loaders given
// different pieces never read the same block.
func (c *Checkpoint) WorkingSetPieces(first, last uint64, frames int) ([]Piece, error) {
	ws, err := c.WorkingSet()
	if err != nil {
		return nil, err
	}
	if frames < 1 {
		return nil, fmt.Errorf("%w: pieces of %d frames", ErrBadInput, frames)
	}
	unit := uint64(frames)
	if unit >= packFrames {
		unit -= unit % packFrames
	}
	last = min(last, c.run.Frames)
	if first >= last {
		return nil, nil
	}
	var out []Piece
	var cur Piece
	rank := uint64(0)
	if first > 0 {
		rank = ws.Rank(uint32(first - 1))
	}
	it := ws.Iterator()
	it.AdvanceIfNeeded(uint32(first))
	for it.HasNext() {
		p := uint64(it.Next())
		if p >= last {
			break
		}
		if rank%unit == 0 && len(cur.Extents) > 0 {
			out = append(out, cur)
			cur = Piece{}
		}
		if len(cur.Extents) == 0 {
			cur.rank = rank
		}
		if k := len(cur.Extents); k > 0 && cur.Extents[k-1].End == p {
			cur.Extents[k-1].End++
		} else {
			cur.Extents = append(cur.Extents, Extent{p, p + 1})
		}
		rank++
	}
	if len(cur.Extents) > 0 {
		out = append(out, cur)
	}
	return out, nil
}

// ReadPiece reads the frames of piece p (of this handle's WorkingSetPieces)
// into dst, p.Frames()*PageSize bytes, one run after the other.
func (c *Checkpoint) ReadPiece(p Piece, dst []byte) error {
	if err := c.removed(); err != nil {
		return err
	}
	n := p.Frames()
	if uint64(len(dst)) != n*PageSize {
		return fmt.Errorf("%w: a piece of %d frames read into %d bytes", ErrBadInput, n, len(dst))
	}
	if ws := c.packed(); ws != nil {
		err := c.readRanks(ws, p.rank, dst)
		if err == nil {
			return nil
		}
		if rerr := c.removed(); rerr != nil {
			return rerr
		}
		c.dropPack(err)
	}
	off := uint64(0)
	for _, e := range p.Extents {
		k := (e.End - e.Start) * PageSize
		if err := c.readVersions(e.Start, dst[off:off+k]); err != nil {
			return c.readErr(err)
		}
		off += k
	}
	return nil
}

// ReadWorkingSet fills dst (a multiple of PageSize bytes) with the frames
// first, first+1, ... of the sparse checkpoint: the frames of W_i as
// stored, zeros for every other frame. It returns how many frames were
// holes (outside W_i).
func (c *Checkpoint) ReadWorkingSet(first uint64, dst []byte) (holes uint64, err error) {
	if err := c.removed(); err != nil {
		return 0, err
	}
	n := uint64(len(dst) / PageSize)
	if len(dst)%PageSize != 0 || first+n > c.run.Frames {
		return 0, fmt.Errorf("%w: read of %d bytes at pfn %d beyond %d frames", ErrBadInput, len(dst), first, c.run.Frames)
	}
	ws, err := c.workingSet()
	if err != nil {
		return 0, c.readErr(err)
	}
	holes, err = c.readSparse(ws, c.packed(), first, dst)
	var ce packFailed
	if errors.As(err, &ce) {
		if rerr := c.removed(); rerr != nil {
			return 0, rerr
		}
		c.dropPack(ce.err)
		holes, err = c.readSparse(ws, nil, first, dst)
	}
	return holes, c.readErr(err)
}

// packFailed marks a failed pack read inside readSparse; the frame versions
// then serve the read.
type packFailed struct{ err error }

func (e packFailed) Error() string { return e.err.Error() }

// readSparse is ReadWorkingSet, from the pack when packed is W_i (not nil)
// and from the frame versions otherwise. The frames of W_i inside the range
// have consecutive ranks, so one Rank finds them all in the pack.
func (c *Checkpoint) readSparse(ws, packed *roaring.Bitmap, first uint64, dst []byte) (uint64, error) {
	n := uint64(len(dst) / PageSize)
	rank := uint64(0)
	if packed != nil && first > 0 {
		rank = packed.Rank(uint32(first - 1))
	}
	cur, data := first, uint64(0)
	it := ws.Iterator()
	it.AdvanceIfNeeded(uint32(first))
	for it.HasNext() {
		a := uint64(it.PeekNext())
		if a >= first+n {
			break
		}
		b := a
		for it.HasNext() && uint64(it.PeekNext()) == b && b < first+n {
			it.Next()
			b++
		}
		clear(dst[(cur-first)*PageSize : (a-first)*PageSize])
		part := dst[(a-first)*PageSize : (b-first)*PageSize]
		if packed != nil {
			if err := c.readRanks(packed, rank, part); err != nil {
				return 0, packFailed{err}
			}
			rank += b - a
		} else if err := c.readVersions(a, part); err != nil {
			return 0, err
		}
		data += b - a
		cur = b
	}
	clear(dst[(cur-first)*PageSize:])
	return n - data, nil
}
