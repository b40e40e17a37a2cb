package fs

import (
	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ckptfs/ckptfs/index"
)

// Source is what the mount needs from a store: run metadata, committed
// checkpoints (with their working sets), interval statistics and device
// state.
// The index package's Store is the real one (FromIndex); tests use small
// in-memory sources to inject errors.
//
// Errors follow the index package: errors.Is(err, index.ErrRunNotFound),
// index.ErrCheckpointMissing, index.ErrNoWorkingSet, index.ErrNoDeviceState,
// index.ErrNoReplayLog, and index.IsCorruption(err) for data that failed a
// check.
type Source interface {
	// Generation increases whenever something visible changes (a commit,
	// a deleted run). The mount compares it to drop cached listings.
	Generation() uint64
	Runs() ([]index.RunInfo, error)
	Run(name string) (index.RunInfo, error)
	// OpenCheckpoint returns the content of committed checkpoint i.
	OpenCheckpoint(run string, i int) (Frames, error)
	IntervalStats(run string, i int) (index.IntervalStats, error)
	DeviceState(run string, i int) ([]byte, error)
	// ReplayLog returns the replay log of a deterministic run as committed
	// now; index.ErrNoReplayLog for other runs.
	ReplayLog(run string) (ReplayLog, error)
}

// Frames is the content of one committed checkpoint. It never changes and is
// safe for concurrent use.
type Frames interface {
	// Size is the guest RAM size in bytes, a multiple of index.PageSize.
	Size() uint64
	// DataFrames is the set of frames that are not all zeros. The caller
	// does not modify it.
	DataFrames() (*roaring.Bitmap, error)
	// ReadFrames fills dst (a multiple of index.PageSize bytes) with the
	// frames first, first+1, ...; all-zero frames read as zeros.
	ReadFrames(first uint64, dst []byte) error

	// WorkingSet is W_i of the checkpoint's interval (index.ErrNoWorkingSet
	// while unknown), loaded once per handle. The caller does not modify it.
	WorkingSet() (*roaring.Bitmap, error)
	// ReadWorkingSet fills dst like ReadFrames, but with the sparse
	// checkpoint: frames outside W_i read as zeros. It returns how many of
	// the frames were such holes.
	ReadWorkingSet(first uint64, dst []byte) (holes uint64, err error)
	// WorkingSetPieces cuts W_i inside [first, last) into pieces of at
	// most frames frames, cut where the store's reads are cheapest to split.
	WorkingSetPieces(first, last uint64, frames int) ([]index.Piece, error)
	// ReadPiece reads the frames of a piece, one run after the other.
	ReadPiece(p index.Piece, dst []byte) error

	Close() error
}

// FromIndex adapts an open store to a Source.
func FromIndex(s *index.Store) Source { return indexSource{s} }

type indexSource struct{ s *index.Store }

func (x indexSource) Generation() uint64                     { return x.s.Generation() }
func (x indexSource) Runs() ([]index.RunInfo, error)         { return x.s.Runs() }
func (x indexSource) Run(name string) (index.RunInfo, error) { return x.s.Run(name) }
func (x indexSource) IntervalStats(run string, i int) (index.IntervalStats, error) {
	return x.s.IntervalStats(run, i)
}
func (x indexSource) DeviceState(run string, i int) ([]byte, error) { return x.s.DeviceState(run, i) }
func (x indexSource) OpenCheckpoint(run string, i int) (Frames, error) {
	c, err := x.s.OpenCheckpoint(run, i)
	if err != nil {
		return nil, err
	}
	return c, nil
}

var _ Frames = (*index.Checkpoint)(nil)
