package index

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/zeebo/xxh3"
)

// RunSpec describes a new run.
type RunSpec struct {
	Name     string
	RAMSize  uint64
	Recorder string // who made the run: "import", "kvmrec/qemu", ...
	Tracker  string // how working sets were found: "pagemap", "hash", "import", "none"
	Meta     map[string]string
	// Deterministic marks a run recorded with QEMU in record mode: it has a
	// replay log (from checkpoint 0 on, possibly empty) and its checkpoints
	// carry instruction counts.
	Deterministic bool
	// QEMUArgs is the full QEMU command line the guest was recorded with
	// (without the program name), for building a replay.
	QEMUArgs []string
}

// CommitInfo is what a checkpoint carries besides its frames.
type CommitInfo struct {
	// WorkingSet is W of the interval that ends at this checkpoint (i-1).
	// Nil when it is not known; must be nil for checkpoint 0.
	WorkingSet *roaring.Bitmap
	// DeviceState is the VMM's device state at this checkpoint, if recorded.
	DeviceState []byte
	// Downtime is how long the VM was paused to take this checkpoint.
	Downtime time.Duration
	// ICount is the guest instruction count at this checkpoint (QMP
	// query-replay); nil when the run is not deterministic. Counts never
	// decrease from one checkpoint to the next.
	ICount *uint64
	// ReplayLog is what the VMM appended to its record/replay log since
	// the previous commit. It is committed atomically with the checkpoint
	// (replaylog.go).
	ReplayLog []byte
}

// smallCheckpoint is the size under which a checkpoint is committed with a
// synced batch instead of ingested tables: tiny tables cost more than the
// WAL's second copy of a few MiB.
const smallCheckpoint = 8 << 20

type blobRef struct {
	interval uint32
	pfn      uint64
}

type pendingVersion struct {
	pfn  uint64
	kind versionKind
	ref  blobRef
}

// RunWriter appends checkpoints to a new run. Frames of a checkpoint are Put
// in increasing pfn order, then Commit makes the checkpoint visible at once.
// A RunWriter is not safe for concurrent use. After any error it is dead:
// Close it; every checkpoint committed before stays intact.
type RunWriter struct {
	s      *Store
	spec   RunSpec
	id     RunID
	frames uint64
	next   uint32 // index of the checkpoint being built

	prev  []xxh3.Uint128 // content hash of every pfn at the last checkpoint
	dedup map[xxh3.Uint128]blobRef

	// The checkpoint being built.
	versions  []pendingVersion
	dirty     *roaring.Bitmap
	lastPut   int64
	small     []byte // blob values while the checkpoint is small
	smallKeys []uint64
	table     *sstable.Writer
	tablePath string
	stats     CheckpointStats
	log       replayLogState
	err       error
	closed    bool
}

var zeroFrame = make([]byte, PageSize)
var zeroHash = xxh3.Hash128(zeroFrame)

// CreateRun starts a new run. The run becomes visible with its checkpoint 0.
func (s *Store) CreateRun(spec RunSpec) (*RunWriter, error) {
	if err := ValidRunName(spec.Name); err != nil {
		return nil, err
	}
	if spec.RAMSize == 0 || spec.RAMSize%PageSize != 0 {
		return nil, fmt.Errorf("%w: RAM size %d is not a positive multiple of %d", ErrBadInput, spec.RAMSize, PageSize)
	}
	if spec.RAMSize/PageSize > 1<<32 {
		return nil, fmt.Errorf("%w: RAM size %d is larger than 16 TiB", ErrBadInput, spec.RAMSize)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.writers[spec.Name] {
		return nil, fmt.Errorf("%w: %q is being written", ErrRunExists, spec.Name)
	}
	if _, err := s.runID(spec.Name); err == nil {
		return nil, fmt.Errorf("%w: %q", ErrRunExists, spec.Name)
	} else if !errors.Is(err, ErrRunNotFound) {
		return nil, err
	}
	id, err := s.allocRunIDLocked()
	if err != nil {
		return nil, err
	}
	s.mu.writers[spec.Name] = true
	frames := spec.RAMSize / PageSize
	w := &RunWriter{s: s, spec: spec, id: id, frames: frames,
		prev: make([]xxh3.Uint128, frames), dedup: map[xxh3.Uint128]blobRef{}}
	for i := range w.prev {
		w.prev[i] = zeroHash
	}
	w.reset()
	return w, nil
}

func (s *Store) allocRunIDLocked() (RunID, error) {
	next := RunID(1)
	v, closer, err := s.db.Get(sequenceKey)
	switch {
	case err == nil:
		if len(v) == 4 {
			next = RunID(binary.BigEndian.Uint32(v))
		}
		closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return 0, wrapRead(err, "run sequence")
	}
	if err := s.db.Set(sequenceKey, binary.BigEndian.AppendUint32(nil, uint32(next+1)), pebble.Sync); err != nil {
		return 0, fmt.Errorf("allocating run id: %w", err)
	}
	return next, nil
}

// Frames is the number of frames of the run's RAM.
func (w *RunWriter) Frames() uint64 { return w.frames }

// Next is the index of the checkpoint being built.
func (w *RunWriter) Next() int { return int(w.next) }

// Dirty is the set of frames Put so far for the pending checkpoint whose
// content differs from the previous checkpoint.
func (w *RunWriter) Dirty() *roaring.Bitmap { return w.dirty }

func (w *RunWriter) reset() {
	w.versions = w.versions[:0]
	w.dirty = roaring.New()
	w.lastPut = -1
	w.small = w.small[:0]
	w.smallKeys = w.smallKeys[:0]
	w.table = nil
	w.tablePath = ""
	w.stats = CheckpointStats{Checkpoint: int(w.next)}
}

func (w *RunWriter) fail(err error) error {
	if w.err == nil {
		w.err = err
	}
	return err
}

// Put offers the content of pfn at the pending checkpoint. Frames whose
// content did not change since the previous checkpoint are dropped, so a
// caller may offer every frame or only candidates. For checkpoint 0 every
// frame not offered is taken to be zero.
func (w *RunWriter) Put(pfn uint64, frame []byte) error {
	if w.err != nil {
		return w.err
	}
	if len(frame) != PageSize {
		return w.fail(fmt.Errorf("%w: frame of %d bytes", ErrBadInput, len(frame)))
	}
	if pfn >= w.frames || int64(pfn) <= w.lastPut {
		return w.fail(fmt.Errorf("%w: pfn %d out of order or beyond %d frames", ErrBadInput, pfn, w.frames))
	}
	w.lastPut = int64(pfn)
	h := xxh3.Hash128(frame)
	if h == w.prev[pfn] {
		return nil
	}
	w.prev[pfn] = h
	w.dirty.Add(uint32(pfn))
	w.stats.ChangedFrames++
	if h == zeroHash && bytes.Equal(frame, zeroFrame) {
		w.stats.ZeroFrames++
		w.versions = append(w.versions, pendingVersion{pfn: pfn, kind: versionZero})
		return nil
	}
	if ref, ok := w.dedup[h]; ok && !w.s.opts.NoDedup {
		w.stats.DedupFrames++
		w.versions = append(w.versions, pendingVersion{pfn: pfn, kind: versionBlob, ref: ref})
		return nil
	}
	ref := blobRef{interval: w.next, pfn: pfn}
	w.dedup[h] = ref
	w.versions = append(w.versions, pendingVersion{pfn: pfn, kind: versionBlob, ref: ref})
	w.stats.NewFrames++
	w.stats.BytesStored += PageSize
	return w.addBlob(pfn, frame)
}

func (w *RunWriter) addBlob(pfn uint64, frame []byte) error {
	if w.table == nil && len(w.small)+frameValueLen <= smallCheckpoint {
		w.small = appendFrameValue(w.small, frame)
		w.smallKeys = append(w.smallKeys, pfn)
		return nil
	}
	if w.table == nil {
		if err := w.openTable(); err != nil {
			return w.fail(err)
		}
	}
	var buf [frameValueLen]byte
	if err := w.table.Set(appendBlobKey(nil, w.id, w.next, pfn), appendFrameValue(buf[:0], frame)); err != nil {
		return w.fail(fmt.Errorf("writing frame table: %w", err))
	}
	return nil
}

var tableSeq atomic.Uint64

func (w *RunWriter) newTable(kind string) (*sstable.Writer, string, error) {
	return w.s.newTable(w.id, w.next, kind)
}

// newTable creates a table file for ingestion in the store's tmp directory.
// Tables of kind "frames" and "pack" hold frame data.
func (s *Store) newTable(id RunID, interval uint32, kind string) (*sstable.Writer, string, error) {
	fs := s.fs
	path := fs.PathJoin(s.tmpDir(), fmt.Sprintf("%d-%d-%s-%d.sst", id, interval, kind, tableSeq.Add(1)))
	o := s.popts.MakeWriterOptions(0, s.db.TableFormat())
	// Frame tables on disk bypass the page cache (direct.go says why).
	if _, onDisk := fs.(sequentialFS); onDisk && (kind == "frames" || kind == "pack") && !s.opts.BufferedTables {
		dw, ok, err := createDirect(path)
		if err != nil {
			return nil, "", err
		}
		if ok {
			return sstable.NewWriter(dw, o), path, nil
		}
	}
	f, err := fs.Create(path, vfs.WriteCategoryUnspecified)
	if err != nil {
		return nil, "", fmt.Errorf("creating %s: %w", path, err)
	}
	// Start writeback every MiB, so that the sync at the end of the table
	// waits for little: the disk works while the writer still fills it.
	f = vfs.NewSyncingFile(f, vfs.SyncingFileOptions{BytesPerSync: 1 << 20})
	return sstable.NewWriter(objstorageprovider.NewFileWritable(f), o), path, nil
}

// openTable moves the buffered small blobs into a table file and continues
// there: the checkpoint became too large for a batch.
func (w *RunWriter) openTable() error {
	t, path, err := w.newTable("frames")
	if err != nil {
		return err
	}
	w.table, w.tablePath = t, path
	for i, pfn := range w.smallKeys {
		val := w.small[i*frameValueLen : (i+1)*frameValueLen]
		if err := t.Set(appendBlobKey(nil, w.id, w.next, pfn), val); err != nil {
			return fmt.Errorf("writing frame table: %w", err)
		}
	}
	w.small, w.smallKeys = w.small[:0], w.smallKeys[:0]
	return nil
}

// Commit makes the pending checkpoint visible, atomically and durably, and
// starts the next one.
func (w *RunWriter) Commit(ctx context.Context, info CommitInfo) (CheckpointStats, error) {
	if w.err != nil {
		return CheckpointStats{}, w.err
	}
	if info.WorkingSet != nil {
		if w.next == 0 {
			return CheckpointStats{}, w.fail(fmt.Errorf("%w: checkpoint 0 has no previous interval for a working set", ErrBadInput))
		}
		// An empty W_i is valid (an idle interval); Maximum panics on it.
		if !info.WorkingSet.IsEmpty() {
			if m := info.WorkingSet.Maximum(); uint64(m) >= w.frames {
				return CheckpointStats{}, w.fail(fmt.Errorf("%w: working set names pfn %d beyond %d frames", ErrBadInput, m, w.frames))
			}
		}
		w.stats.WorkingSetFrames = info.WorkingSet.GetCardinality()
	}
	if err := w.checkReplay(info); err != nil {
		return CheckpointStats{}, w.fail(err)
	}
	w.stats.DeviceStateBytes = uint64(len(info.DeviceState))
	w.stats.BytesStored += uint64(len(info.DeviceState))
	w.stats.DowntimeNS = int64(info.Downtime)
	w.stats.CommittedAt = time.Now().UTC()

	meta, err := w.metaKVs(info)
	if err != nil {
		return CheckpointStats{}, w.fail(err)
	}
	ingest, err := w.ingestForLog(info)
	if err != nil {
		return CheckpointStats{}, w.fail(err)
	}
	need := uint64(len(w.small))
	for _, e := range meta {
		need += uint64(len(e.k) + len(e.v))
	}
	if err := w.s.checkSpace(need); err != nil {
		return CheckpointStats{}, w.fail(err)
	}
	if !ingest {
		err = w.commitBatch(meta)
	} else {
		err = w.commitIngest(ctx, meta)
	}
	if err != nil {
		return CheckpointStats{}, w.fail(err)
	}
	w.replayLogCommitted(info.ReplayLog, false, info.ICount)
	st := w.stats
	w.s.generation.Add(1)
	w.next++
	w.reset()
	return st, nil
}

type kv struct{ k, v []byte }

// metaKVs returns every non-blob key of the checkpoint, in key order.
func (w *RunWriter) metaKVs(info CommitInfo) ([]kv, error) {
	var out []kv
	stats, _ := json.Marshal(w.stats)
	out = append(out, kv{appendIntervalKey(nil, kindCommit, w.id, w.next), stats})
	if info.DeviceState != nil {
		out = append(out, kv{appendIntervalKey(nil, kindDevState, w.id, w.next), info.DeviceState})
	}
	out = append(out, w.replayLogKVs(info.ReplayLog, false)...)
	if w.next == 0 {
		rec, _ := json.Marshal(RunRecord{Name: w.spec.Name, RAMSize: w.spec.RAMSize, PageSize: PageSize,
			Recorder: w.spec.Recorder, Tracker: w.spec.Tracker, Created: time.Now().UTC(), Meta: w.spec.Meta,
			Deterministic: w.spec.Deterministic, QEMUArgs: w.spec.QEMUArgs})
		out = append(out, kv{appendRunKey(nil, kindRun, w.id), rec})
		out = append(out, kv{appendNameKey(nil, w.spec.Name), binary.BigEndian.AppendUint32(nil, uint32(w.id))})
	}
	for _, v := range w.versions {
		out = append(out, kv{appendVersionKey(nil, w.id, v.pfn, w.next), appendVersionValue(nil, v.kind, v.ref.interval, v.ref.pfn)})
	}
	if info.WorkingSet != nil {
		ws, err := info.WorkingSet.ToBytes()
		if err != nil {
			return nil, fmt.Errorf("encoding working set: %w", err)
		}
		val := binary.LittleEndian.AppendUint64(nil, xxh3.Hash(ws))
		out = append(out, kv{appendIntervalKey(nil, kindWS, w.id, w.next-1), append(val, ws...)})
	}
	return out, nil
}

func (w *RunWriter) commitBatch(meta []kv) error {
	b := w.s.db.NewBatch()
	defer b.Close()
	for i, pfn := range w.smallKeys {
		val := w.small[i*frameValueLen : (i+1)*frameValueLen]
		_ = b.Set(appendBlobKey(nil, w.id, w.next, pfn), val, nil)
	}
	for _, e := range meta {
		_ = b.Set(e.k, e.v, nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("committing checkpoint %d of %q: %w", w.next, w.spec.Name, err)
	}
	return nil
}

// commitIngest writes the non-blob keys to a second table and ingests both in
// one atomic step. The blob table's keys are new to the LSM (b|run|i|*), so
// Pebble can place it at the bottom level where it is never rewritten.
func (w *RunWriter) commitIngest(ctx context.Context, meta []kv) error {
	var paths []string
	defer func() {
		for _, p := range paths {
			_ = w.s.fs.Remove(p)
		}
	}()
	// Without frames (a large replay log alone) only the meta table.
	if w.table != nil {
		paths = append(paths, w.tablePath)
		if err := w.table.Close(); err != nil {
			return fmt.Errorf("finishing frame table: %w", err)
		}
		w.table = nil
	}
	mt, mpath, err := w.newTable("meta")
	if err != nil {
		return err
	}
	paths = append(paths, mpath)
	for _, e := range meta {
		if err := mt.Set(e.k, e.v); err != nil {
			mt.Close()
			return fmt.Errorf("writing meta table: %w", err)
		}
	}
	if err := mt.Close(); err != nil {
		return fmt.Errorf("finishing meta table: %w", err)
	}
	if err := w.s.db.Ingest(ctx, paths); err != nil {
		return fmt.Errorf("committing checkpoint %d of %q: %w", w.next, w.spec.Name, err)
	}
	return nil
}

// Close ends the writer. A pending, uncommitted checkpoint is dropped.
func (w *RunWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	if w.table != nil {
		_ = w.table.Close()
		_ = w.s.fs.Remove(w.tablePath)
	}
	w.s.mu.Lock()
	delete(w.s.mu.writers, w.spec.Name)
	w.s.mu.Unlock()
	if w.next > 1 {
		w.s.compactRunInBackground(w.id)
	}
	if w.err == nil {
		w.err = errors.New("index: run writer closed")
	}
	return nil
}
