package index

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
)

// VerifyReport sums up what Verify checked.
type VerifyReport struct {
	Runs        int    `json:"runs"`
	Checkpoints int    `json:"checkpoints"`
	Versions    uint64 `json:"versions"`
	Blobs       uint64 `json:"blobs"`
	Packs       int    `json:"packs"`
	BlobBytes   uint64 `json:"blob_bytes"`
	// ReplayLogBytes is the size of the replay logs checked.
	ReplayLogBytes uint64 `json:"replay_log_bytes,omitempty"`
	// Tables is the number of the store's table files whose every block
	// checksum was checked (whole-store verify only).
	Tables int `json:"tables,omitempty"`
	// Problems lists every inconsistency found; empty means the store is sound.
	Problems []string `json:"problems,omitempty"`
}

const maxProblems = 50

func (r *VerifyReport) add(format string, args ...any) {
	if len(r.Problems) < maxProblems {
		r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
	}
}

// Verify reads every record of one run (or of all runs when name is "") and
// checks checksums, references and ordering. Reading every block also makes
// Pebble check its own block checksums. A whole-store verify also checks
// every block of every table file, so damage to records of no run (the run
// sequence, a removed run's remains) is found too. Problems found are in
// the report; the error is non-nil for problems too, and for I/O failures.
func (s *Store) Verify(ctx context.Context, name string, progress Progress) (VerifyReport, error) {
	var rep VerifyReport
	var runs []RunInfo
	if name != "" {
		ri, err := s.Run(name)
		if err != nil {
			return rep, err
		}
		runs = []RunInfo{ri}
	} else {
		var err error
		if runs, err = s.Runs(); err != nil {
			return rep, err
		}
	}
	var total, done uint64
	for _, ri := range runs {
		total += s.approxRunBytes(ri.ID)
	}
	if name == "" {
		tables, err := s.db.SSTables()
		if err != nil {
			return rep, wrapRead(err, "the list of tables")
		}
		names := map[RunID]string{}
		for _, ri := range runs {
			names[ri.ID] = ri.Name
		}
		if err := s.verifyTables(ctx, tables, names, &rep); err != nil {
			return rep, err
		}
	}
	for _, ri := range runs {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		rep.Runs++
		rep.Checkpoints += ri.Checkpoints
		if err := s.verifyRun(ctx, ri, &rep, func(n uint64) {
			done += n
			if progress != nil {
				progress(min(done, total), total)
			}
		}); err != nil {
			return rep, err
		}
	}
	if len(rep.Problems) > 0 {
		return rep, fmt.Errorf("%w: %d problem(s), first: %s", ErrCorrupt, len(rep.Problems), rep.Problems[0])
	}
	return rep, nil
}

// verifyTables checks the block checksums of every live table file,
// reading the file itself (not through the block cache), and reports each
// damaged one with what it holds.
func (s *Store) verifyTables(ctx context.Context, levels [][]pebble.SSTableInfo, names map[RunID]string, rep *VerifyReport) error {
	runName := func(id RunID) string { return names[id] }
	seen := map[uint64]bool{}
	for _, level := range levels {
		for _, t := range level {
			if err := ctx.Err(); err != nil {
				return err
			}
			num := uint64(t.BackingSSTNum)
			if seen[num] || t.BackingType != pebble.BackingTypeLocal {
				continue
			}
			seen[num] = true
			file := fmt.Sprintf("%06d.sst", num)
			err := s.checkTable(s.fs.PathJoin(s.dir, file), t)
			if errors.Is(err, os.ErrNotExist) {
				continue // compacted away meanwhile
			}
			rep.Tables++
			if err != nil {
				lo, hi := keyWords(t.Smallest.UserKey, runName), keyWords(t.Largest.UserKey, runName)
				holds := lo
				if hi != lo {
					holds = lo + " to " + hi
				}
				rep.add("table %s is damaged (it holds %s): %s", file, holds, firstLine(err))
			}
		}
	}
	return nil
}

// checkTable validates every block checksum of one table file.
func (s *Store) checkTable(path string, t pebble.SSTableInfo) error {
	f, err := s.fs.Open(path)
	if err != nil {
		return err
	}
	readable, err := objstorageprovider.NewFileReadable(f, s.fs, objstorageprovider.NewReadaheadConfig(), path)
	if err != nil {
		f.Close()
		return err
	}
	o := s.popts.MakeReaderOptions()
	o.CacheOpts.FileNum = t.BackingSSTNum // no cache: names the file in errors
	r, err := sstable.NewReader(context.Background(), readable, o)
	if err != nil {
		readable.Close()
		return err
	}
	defer r.Close()
	return r.ValidateBlockChecksums()
}

func (s *Store) approxRunBytes(id RunID) uint64 {
	n, _ := s.db.EstimateDiskUsage(appendRunKey(nil, kindBlob, id), runPrefixEnd(kindBlob, id))
	return n
}

func (s *Store) verifyRun(ctx context.Context, ri RunInfo, rep *VerifyReport, progress func(uint64)) error {
	id, name := ri.ID, ri.Name
	words := func(k []byte) string { return recordWords(k, func(RunID) string { return name }) }
	// Commit records: contiguous from 0 and decodable.
	if err := s.scanKeys(kindCommit, id, name, func(k, v []byte) {
		i := binary.BigEndian.Uint32(k[5:])
		var st CheckpointStats
		if err := json.Unmarshal(v, &st); err != nil || st.Checkpoint != int(i) {
			rep.add("run %q: commit record of checkpoint %d is unreadable", name, i)
		}
	}); err != nil {
		return fmt.Errorf("run %q: %w", name, err)
	}
	for i := 0; i < ri.Checkpoints; i++ {
		if _, err := s.checkpointStats(id, name, i); err != nil {
			rep.add("run %q: checkpoint %d: %v", name, i, err)
		}
	}
	for i := 0; i < ri.Intervals; i++ {
		if _, err := s.workingSet(id, name, i); err != nil {
			rep.add("run %q: working set %d: %v", name, i, err)
		}
	}
	// Blobs: checksum, bounds, committed interval.
	blobs := map[uint32]map[uint64]bool{}
	if err := s.scanKeys(kindBlob, id, name, func(k, v []byte) {
		_, i, pfn, ok := decodeBlobKey(k)
		switch {
		case !ok:
			rep.add("run %q: malformed key %s", name, keyString(k))
			return
		case int(i) >= ri.Checkpoints:
			rep.add("run %q: %s belongs to no committed checkpoint", name, words(k))
		case pfn >= ri.Frames:
			rep.add("run %q: %s is beyond %d frames", name, words(k), ri.Frames)
		default:
			if _, err := decodeFrameValue(v); err != nil {
				rep.add("run %q: %s %v", name, words(k), err)
				if len(v) != frameValueLen {
					return
				}
			}
		}
		rep.Blobs++
		rep.BlobBytes += PageSize
		if blobs[i] == nil {
			blobs[i] = map[uint64]bool{}
		}
		blobs[i][pfn] = true
		if rep.Blobs%256 == 0 {
			progress(256 * PageSize)
		}
	}); err != nil {
		return fmt.Errorf("run %q: %w", name, err)
	}
	// Working-set packs: whole, checksummed, and equal to the frame
	// versions they were built from.
	if err := s.verifyPacks(ctx, ri, rep); err != nil {
		return fmt.Errorf("run %q: %w", name, err)
	}
	// Replay log: checksums, no gaps up to its size; instruction counts.
	if err := s.verifyReplayLog(ri, rep); err != nil {
		return fmt.Errorf("run %q: %w", name, err)
	}
	// Versions: committed, well-formed, referring to an existing older blob.
	if err := s.scanKeys(kindVersion, id, name, func(k, v []byte) {
		_, pfn, i, ok := decodeVersionKey(k)
		if !ok {
			rep.add("run %q: malformed key %s", name, keyString(k))
			return
		}
		rep.Versions++
		kind, ri2, rp, err := decodeVersionValue(v)
		switch {
		case err != nil:
			rep.add("run %q: %s: %v", name, words(k), err)
		case int(i) >= ri.Checkpoints:
			rep.add("run %q: %s belongs to no committed checkpoint", name, words(k))
		case pfn >= ri.Frames:
			rep.add("run %q: %s is beyond %d frames", name, words(k), ri.Frames)
		case kind == versionBlob && (ri2 > i || !blobs[ri2][rp]):
			rep.add("run %q: %s refers to a missing frame (checkpoint %d, pfn %d)", name, words(k), ri2, rp)
		}
	}); err != nil {
		return fmt.Errorf("run %q: %w", name, err)
	}
	return nil
}

// scanKeys calls fn for every key of kind for run, surfacing read errors
// (including Pebble's block checksum failures) as corruption, named in a
// user's words (what the records were, of which run and checkpoint).
func (s *Store) scanKeys(kind keyKind, id RunID, name string, fn func(k, v []byte)) error {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: appendRunKey(nil, kind, id), UpperBound: runPrefixEnd(kind, id)})
	if err != nil {
		return wrapRead(err, kindWords(kind, name))
	}
	names := func(RunID) string { return name }
	var last []byte
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			what := keyWords(it.Key(), names)
			it.Close()
			return wrapRead(err, what)
		}
		last = append(last[:0], it.Key()...)
		fn(it.Key(), v)
	}
	if err := it.Close(); err != nil {
		what := kindWords(kind, name)
		if last != nil {
			what = keyWordsAfter(last, names)
		}
		return wrapRead(err, what)
	}
	return nil
}
