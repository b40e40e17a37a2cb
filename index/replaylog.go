package index

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/zeebo/xxh3"
)

// The replay log of a deterministic run.
//
// QEMU in record mode (-icount ...,rr=record,rrfile=LOG) appends to its
// record/replay log while the guest runs. The recorder hands the store the
// bytes appended since the previous checkpoint with each commit
// (CommitInfo.ReplayLog) and the tail after the last checkpoint with
// RunWriter.AppendReplayLog. The store keeps the log as chunks of at most
// maxLogChunk bytes, each with an xxh3-64 checksum like a frame, keyed by the
// byte offset at which it starts, plus one record with the log's size and
// whether it is complete (keys.go). Chunks and record are written in the same
// batch or ingest as the checkpoint they belong to, so a reader sees the log
// exactly as of a commit. The log only grows: committed bytes never change
// and its size never shrinks.

// ErrNoReplayLog means a run has no replay log: it was not recorded
// deterministically.
var ErrNoReplayLog = errors.New("index: run has no replay log")

// maxLogChunk is the largest chunk of a replay log in the store.
const maxLogChunk = 1 << 20

// replayLogRecord is the value of the l|run key.
type replayLogRecord struct {
	Size     uint64    `json:"size"`
	Complete bool      `json:"complete"`
	Updated  time.Time `json:"updated"`
}

// replayLogState is what a RunWriter knows about its run's replay log and
// instruction counts.
type replayLogState struct {
	has      bool // the run has a replay log record (or gets one now)
	size     uint64
	complete bool
	icount   *uint64 // of the last committed checkpoint that had one
}

// checkReplay validates the replay part of info for the pending checkpoint
// and puts it into the checkpoint's stats.
func (w *RunWriter) checkReplay(info CommitInfo) error {
	if info.ICount != nil {
		if w.log.icount != nil && *info.ICount < *w.log.icount {
			return fmt.Errorf("%w: instruction count %d of checkpoint %d is less than %d of an earlier checkpoint",
				ErrBadInput, *info.ICount, w.next, *w.log.icount)
		}
		v := *info.ICount
		w.stats.ICount = &v
	}
	if len(info.ReplayLog) > 0 && w.log.complete {
		return fmt.Errorf("%w: replay log of run %q is already complete", ErrBadInput, w.spec.Name)
	}
	w.stats.BytesStored += uint64(len(info.ReplayLog))
	return nil
}

// replayLogKVs returns the keys that append data to the replay log (the
// record first, then the chunks, in key order), or nothing when the run has
// no replay log and data is nil.
func (w *RunWriter) replayLogKVs(data []byte, complete bool) []kv {
	if !w.log.has && !w.spec.Deterministic && data == nil && !complete {
		return nil
	}
	rec, _ := json.Marshal(replayLogRecord{Size: w.log.size + uint64(len(data)), Complete: w.log.complete || complete,
		Updated: time.Now().UTC()})
	out := []kv{{appendRunKey(nil, kindLog, w.id), rec}}
	for off := 0; off < len(data); off += maxLogChunk {
		chunk := data[off:min(len(data), off+maxLogChunk)]
		val := make([]byte, logHeaderLen, logHeaderLen+len(chunk))
		binary.LittleEndian.PutUint64(val, xxh3.Hash(chunk))
		out = append(out, kv{appendLogKey(nil, w.id, w.log.size+uint64(off)), append(val, chunk...)})
	}
	return out
}

// replayLogCommitted records that data was durably appended.
func (w *RunWriter) replayLogCommitted(data []byte, complete bool, icount *uint64) {
	if w.log.has || w.spec.Deterministic || data != nil || complete {
		w.log.has = true
		w.log.size += uint64(len(data))
		w.log.complete = w.log.complete || complete
	}
	if icount != nil {
		v := *icount
		w.log.icount = &v
	}
}

// ingestForLog reports whether the pending checkpoint must be ingested
// rather than committed with a batch because of its replay log, and moves
// its buffered frames into a table if so.
func (w *RunWriter) ingestForLog(info CommitInfo) (bool, error) {
	if w.table != nil {
		return true, nil
	}
	if len(w.small)+len(info.ReplayLog) <= smallCheckpoint {
		return false, nil
	}
	if len(w.smallKeys) > 0 {
		if err := w.openTable(); err != nil {
			return false, err
		}
	}
	return true, nil
}

// AppendReplayLog appends data to the run's replay log, durably, without a
// checkpoint: the tail QEMU wrote after the last checkpoint. complete marks
// the log as final; nothing can be appended after that. It needs checkpoint
// 0 to be committed (the run does not exist before), and the bytes become
// visible to readers at once.
func (w *RunWriter) AppendReplayLog(ctx context.Context, data []byte, complete bool) error {
	if w.err != nil {
		return w.err
	}
	if w.next == 0 {
		return w.fail(fmt.Errorf("%w: replay log of run %q before its checkpoint 0", ErrBadInput, w.spec.Name))
	}
	if w.log.complete {
		if len(data) == 0 {
			return nil
		}
		return w.fail(fmt.Errorf("%w: replay log of run %q is already complete", ErrBadInput, w.spec.Name))
	}
	if len(data) == 0 && !complete {
		return nil
	}
	if data == nil {
		data = []byte{}
	}
	kvs := w.replayLogKVs(data, complete)
	if err := w.s.checkSpace(uint64(len(data))); err != nil {
		return w.fail(fmt.Errorf("appending to the replay log of %q: %w", w.spec.Name, err))
	}
	if err := w.writeKVs(ctx, kvs, len(data) > smallCheckpoint); err != nil {
		return w.fail(fmt.Errorf("appending to the replay log of %q: %w", w.spec.Name, err))
	}
	w.replayLogCommitted(data, complete, nil)
	w.s.generation.Add(1)
	return nil
}

// writeKVs writes kvs (in key order) atomically and durably: as a synced
// batch, or as one ingested table when large.
func (w *RunWriter) writeKVs(ctx context.Context, kvs []kv, large bool) error {
	if !large {
		b := w.s.db.NewBatch()
		defer b.Close()
		for _, e := range kvs {
			_ = b.Set(e.k, e.v, nil)
		}
		return b.Commit(pebble.Sync)
	}
	t, path, err := w.newTable("log")
	if err != nil {
		return err
	}
	defer func() { _ = w.s.fs.Remove(path) }()
	for _, e := range kvs {
		if err := t.Set(e.k, e.v); err != nil {
			t.Close()
			return fmt.Errorf("writing log table: %w", err)
		}
	}
	if err := t.Close(); err != nil {
		return fmt.Errorf("finishing log table: %w", err)
	}
	return w.s.db.Ingest(ctx, []string{path})
}

// ReplayLog is a read handle on the replay log of a run, as of the moment it
// was opened: Size and Complete do not change, and ReadAt reads the bytes
// committed then (later commits only append). Open a new one to see more. It
// is safe for concurrent use and holds no store resources between calls.
type ReplayLog struct {
	s        *Store
	id       RunID
	name     string
	size     int64
	complete bool
	updated  time.Time

	mu struct {
		sync.Mutex
		off   int64  // offset of the cached chunk
		chunk []byte // the last chunk read, checked
	}
}

// ReplayLog returns the replay log of run name, or an error wrapping
// ErrNoReplayLog when the run has none.
func (s *Store) ReplayLog(name string) (*ReplayLog, error) {
	if err := ValidRunName(name); err != nil {
		return nil, err
	}
	id, err := s.runID(name)
	if err != nil {
		return nil, err
	}
	rec, ok, err := s.replayLogRecord(id, name)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoReplayLog, name)
	}
	if rec.Size > 1<<62 {
		return nil, corruptf("replay log of run %q: size %d", name, rec.Size)
	}
	return &ReplayLog{s: s, id: id, name: name, size: int64(rec.Size), complete: rec.Complete, updated: rec.Updated}, nil
}

func (s *Store) replayLogRecord(id RunID, name string) (replayLogRecord, bool, error) {
	key := appendRunKey(nil, kindLog, id)
	v, closer, err := s.db.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return replayLogRecord{}, false, nil
	}
	if err != nil {
		return replayLogRecord{}, false, wrapRead(err, "replay log of run "+name)
	}
	defer closer.Close()
	var rec replayLogRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return replayLogRecord{}, false, corruptf("replay log of run %q: record: %v", name, err)
	}
	return rec, true, nil
}

// Size is the number of bytes of the log.
func (l *ReplayLog) Size() int64 { return l.size }

// Complete reports whether the log is final: the recording ended and
// nothing will be appended.
func (l *ReplayLog) Complete() bool { return l.complete }

// ModTime is when the log last grew (or was marked complete).
func (l *ReplayLog) ModTime() time.Time { return l.updated }

// ReadAt reads len(p) bytes at off, with io.ReaderAt's semantics: fewer
// bytes than len(p) only with an error, io.EOF at the end of the log. Every
// chunk's checksum is checked; a mismatch is an error wrapping ErrCorrupt,
// never wrong bytes.
func (l *ReplayLog) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%w: replay log read at offset %d", ErrBadInput, off)
	}
	if off >= l.size {
		return 0, io.EOF
	}
	want := int(min(int64(len(p)), l.size-off))
	var it *pebble.Iterator
	defer func() {
		if it != nil {
			it.Close()
		}
	}()
	n := 0
	for n < want {
		pos := off + int64(n)
		start, chunk, err := l.chunkAt(&it, pos)
		if err != nil {
			return n, err
		}
		n += copy(p[n:want], chunk[pos-start:])
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// chunkAt returns the checked chunk that holds byte pos and the offset at
// which it starts. It keeps the last chunk, and reads with *it (created on
// first use), moving to the next chunk with Next when reads are sequential.
func (l *ReplayLog) chunkAt(it **pebble.Iterator, pos int64) (int64, []byte, error) {
	l.mu.Lock()
	start, chunk := l.mu.off, l.mu.chunk
	l.mu.Unlock()
	if chunk != nil && start <= pos && pos < start+int64(len(chunk)) {
		return start, chunk, nil
	}
	if *it == nil {
		var err error
		*it, err = l.s.db.NewIter(&pebble.IterOptions{
			LowerBound: appendLogKey(nil, l.id, 0),
			UpperBound: appendLogKey(nil, l.id, uint64(l.size)),
		})
		if err != nil {
			return 0, nil, wrapRead(err, "replay log of run "+l.name)
		}
	}
	i := *it
	found := false
	if i.Valid() {
		if _, cur, ok := decodeLogKey(i.Key()); ok && int64(cur) < pos && i.Next() {
			_, next, ok := decodeLogKey(i.Key())
			found = ok && int64(next) <= pos
		}
	}
	if !found && !i.SeekLT(appendLogKey(nil, l.id, uint64(pos)+1)) {
		return 0, nil, l.missing(i, pos)
	}
	_, so, ok := decodeLogKey(i.Key())
	if !ok {
		return 0, nil, corruptf("replay log of run %q at offset %d: malformed key %s", l.name, pos, keyString(i.Key()))
	}
	v, err := i.ValueAndErr()
	if err != nil {
		return 0, nil, wrapRead(err, fmt.Sprintf("replay log of run %q at offset %d", l.name, so))
	}
	if len(v) < logHeaderLen+1 || len(v) > logHeaderLen+maxLogChunk {
		return 0, nil, corruptf("replay log of run %q at offset %d: chunk of %d bytes", l.name, so, len(v)-logHeaderLen)
	}
	if binary.LittleEndian.Uint64(v) != xxh3.Hash(v[logHeaderLen:]) {
		return 0, nil, corruptf("replay log of run %q at offset %d: checksum mismatch", l.name, so)
	}
	start = int64(so)
	if pos >= start+int64(len(v)-logHeaderLen) {
		return 0, nil, l.missing(i, pos)
	}
	chunk = append([]byte(nil), v[logHeaderLen:]...)
	l.mu.Lock()
	l.mu.off, l.mu.chunk = start, chunk
	l.mu.Unlock()
	return start, chunk, nil
}

// missing explains why no chunk holds byte pos: a read error, the run was
// removed meanwhile, or a damaged store.
func (l *ReplayLog) missing(it *pebble.Iterator, pos int64) error {
	if err := it.Error(); err != nil {
		return wrapRead(err, fmt.Sprintf("replay log of run %q at offset %d", l.name, pos))
	}
	if id, err := l.s.runID(l.name); err != nil || id != l.id {
		return fmt.Errorf("%w: %q was removed while its replay log was read", ErrRunRemoved, l.name)
	}
	return corruptf("replay log of run %q at offset %d: missing", l.name, pos)
}

// verifyReplayLog checks the replay log of a run (record, chunk checksums,
// chunks tiling the log without gaps up to its size) and that instruction
// counts never decrease.
func (s *Store) verifyReplayLog(ri RunInfo, rep *VerifyReport) error {
	name := ri.Name
	var (
		rec    *replayLogRecord
		next   uint64
		chunks bool
	)
	if err := s.scanKeys(kindLog, ri.ID, name, func(k, v []byte) {
		if len(k) == 5 {
			var r replayLogRecord
			if err := json.Unmarshal(v, &r); err != nil {
				rep.add("replay log of run %q: its size record is unreadable", name)
				return
			}
			rec = &r
			return
		}
		_, off, ok := decodeLogKey(k)
		if !ok {
			rep.add("replay log of run %q: malformed key %s", name, keyString(k))
			return
		}
		chunks = true
		switch {
		case off > next:
			rep.add("replay log of run %q at offset %d: %d bytes missing", name, next, off-next)
		case off < next:
			rep.add("replay log of run %q at offset %d: chunk overlaps the one before", name, off)
		}
		n := uint64(max(0, len(v)-logHeaderLen))
		switch {
		case len(v) < logHeaderLen+1 || len(v) > logHeaderLen+maxLogChunk:
			rep.add("replay log of run %q at offset %d: chunk of %d bytes", name, off, n)
		case binary.LittleEndian.Uint64(v) != xxh3.Hash(v[logHeaderLen:]):
			rep.add("replay log of run %q at offset %d: checksum mismatch", name, off)
		}
		next = off + n
		rep.ReplayLogBytes += n
	}); err != nil {
		return err
	}
	switch {
	case rec == nil && ri.Deterministic && ri.Checkpoints > 0:
		rep.add("replay log of run %q: missing (the run is deterministic)", name)
	case rec == nil && chunks:
		rep.add("replay log of run %q: %d bytes stored but no record of its size", name, next)
	case rec != nil && next < rec.Size:
		rep.add("replay log of run %q at offset %d: %d bytes missing up to its size of %d", name, next, rec.Size-next, rec.Size)
	case rec != nil && next > rec.Size:
		rep.add("replay log of run %q at offset %d: %d bytes beyond its size", name, rec.Size, next-rec.Size)
	}
	var last *uint64
	for i := 0; i < ri.Checkpoints; i++ {
		st, err := s.checkpointStats(ri.ID, name, i)
		if err != nil {
			continue // reported with the commit records
		}
		if st.ICount == nil {
			continue
		}
		if last != nil && *st.ICount < *last {
			rep.add("run %q: instruction count %d of checkpoint %d is less than %d before it", name, *st.ICount, i, *last)
		}
		last = st.ICount
	}
	return nil
}

// metaQEMUArgs reads the QEMU command line that runs recorded before
// RunSpec.QEMUArgs kept in Meta["qemu_args"], a JSON list; nil if absent or
// not a list of strings.
func metaQEMUArgs(meta map[string]string) []string {
	raw, ok := meta["qemu_args"]
	if !ok {
		return nil
	}
	var args []string
	if err := json.Unmarshal([]byte(raw), &args); err != nil {
		return nil
	}
	return args
}
