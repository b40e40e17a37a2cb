package index

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// PageSize is the frame size ckptfs stores. Guests with other page sizes are
// not supported yet.
const PageSize = 4096

// Options configure a Store. The zero value is a good default.
type Options struct {
	// Create makes the store directory if it does not exist. Without it,
	// opening a missing store fails with ErrNoStore.
	Create bool
	// InMemory keeps the whole store in memory (Pebble's vfs.NewMem); for tests.
	InMemory bool
	// FS replaces the filesystem the store and Pebble work on, for example
	// with an in-memory or error-injecting vfs.FS; the store then takes no
	// directory lock. nil means the operating system's.
	FS vfs.FS
	// Compression of frame data: "snappy" (default), "minlz", "zstd", "none".
	Compression string
	// NoDedup stores every changed frame even when an identical frame of the
	// same run is already stored (for the space benchmark).
	NoDedup bool
	// BlockSize is the target size of a table block (default 64 KiB). Frames
	// are read in bulk (prefetch, export, 1 MiB FUSE reads), so large blocks
	// cost little and save per-block work.
	BlockSize int
	// CacheSize is Pebble's block cache in bytes (default 512 MiB): the
	// mount re-reads hot frames for every replay of an interval, and the
	// live frames of a long run are spread over many blocks.
	CacheSize int64
	// Logger receives the store's log lines (default slog.Default()).
	Logger *slog.Logger
	// BufferedTables writes frame tables through the page cache instead of
	// with O_DIRECT (the ingest benchmark's baseline).
	BufferedTables bool
}

// Store is an open ckptfs store. It is safe for concurrent use. One process
// owns a store at a time; a second Open of the same directory fails with
// ErrStoreBusy.
type Store struct {
	dir      string
	fs       vfs.FS
	db       *pebble.DB
	opts     Options
	popts    *pebble.Options
	cache    *pebble.Cache // released by Close: DropCache and CacheSize check mu.closed
	cacheCap int64
	log      *slog.Logger
	health   *health // damage and error lines, noticed once (health.go)
	lockFD   int

	bg       sync.WaitGroup // background compactions; Close waits for them
	bgCtx    context.Context
	bgCancel context.CancelFunc

	// generation counts commits and deletions so that readers (the mount)
	// can tell cheaply whether anything changed.
	generation atomic.Uint64
	// removed holds the RunIDs DeleteRun removed while the store is open,
	// so that a checkpoint handle of such a run fails with ErrRunRemoved
	// instead of finding its frames "missing".
	removed sync.Map

	mu struct {
		sync.Mutex
		writers map[string]bool       // runs being written by a RunWriter
		packing map[string]*packState // runs whose packs are being built
		// open checkpoint handles, closed with the store: Pebble refuses
		// to close with iterators still open.
		checkpoints map[*Checkpoint]struct{}
		closed      bool // Close has begun; the block cache may be gone
	}
}

// Open opens (or, with Options.Create, creates) the store in dir.
func Open(dir string, opts Options) (*Store, error) {
	s := &Store{dir: dir, opts: opts, lockFD: -1}
	s.log = opts.Logger
	if s.log == nil {
		s.log = slog.Default()
	}
	s.health = newHealth(s.log)
	switch {
	case opts.FS != nil:
		s.fs = opts.FS
	case opts.InMemory:
		s.fs = vfs.NewMem()
	default:
		s.fs = sequentialFS{privateFS{vfs.Default}}
	}
	comp, err := compressionProfile(opts.Compression)
	if err != nil {
		return nil, err
	}
	if !opts.InMemory && opts.FS == nil {
		if err := s.lockDir(opts.Create); err != nil {
			return nil, err
		}
		tightenModes(dir)
	}
	if err := s.fs.MkdirAll(s.tmpDir(), 0o700); err != nil {
		s.unlock()
		return nil, fmt.Errorf("creating %s: %w", s.tmpDir(), err)
	}
	s.cleanTmp()

	cacheSize := opts.CacheSize
	if cacheSize <= 0 {
		cacheSize = DefaultCacheSize
	}
	cache := pebble.NewCache(cacheSize)
	defer cache.Unref()
	s.cache = cache
	s.cacheCap = cacheSize
	po := &pebble.Options{
		FS:                 s.fs,
		Cache:              cache,
		FormatMajorVersion: pebble.FormatNewest,
		MemTableSize:       64 << 20,
		// Checkpoints arrive as ingested tables; a deeper L0 before stalling
		// keeps a fast recorder from waiting on compactions of tiny tables.
		L0CompactionThreshold: 8,
		L0StopWritesThreshold: 64,
		Logger:                quietLogger{s.log, s.health},
		EventListener: &pebble.EventListener{
			// Pebble's default is Fatalf: a corrupt block must fail the
			// read that found it, not the process. One line per file.
			DataCorruption: func(info pebble.DataCorruptionInfo) {
				s.health.damaged(info.Path, firstLine(info.Details))
			},
			BackgroundError: s.health.backgroundError,
		},
	}
	po.Experimental.CompactionScheduler = s.health.sched
	blockSize := opts.BlockSize
	if blockSize <= 0 {
		blockSize = 64 << 10
	}
	for i := range po.Levels {
		po.Levels[i].Compression = func() *sstable.CompressionProfile { return comp }
		po.Levels[i].BlockSize = blockSize
	}
	po.EnsureDefaults()
	s.popts = po
	db, err := pebble.Open(dir, po)
	if err != nil {
		s.unlock()
		if pebble.IsCorruptionError(err) {
			return nil, fmt.Errorf("%w: opening %s: %s", ErrCorrupt, dir, firstLine(err))
		}
		return nil, fmt.Errorf("opening store %s: %s", dir, firstLine(err))
	}
	s.db = db
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	s.mu.writers = map[string]bool{}
	s.mu.packing = map[string]*packState{}
	s.mu.checkpoints = map[*Checkpoint]struct{}{}
	return s, nil
}

// Dir returns the store directory.
func (s *Store) Dir() string { return s.dir }

// Generation increases whenever a checkpoint is committed or a run removed.
func (s *Store) Generation() uint64 { return s.generation.Load() }

// Close closes the store and releases its lock.
func (s *Store) Close() error {
	s.mu.Lock()
	s.mu.closed = true
	s.mu.Unlock()
	s.bgCancel()
	s.bg.Wait()
	s.mu.Lock()
	open := make([]*Checkpoint, 0, len(s.mu.checkpoints))
	for c := range s.mu.checkpoints {
		open = append(open, c)
	}
	s.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
	// Leave nothing in the WAL: the tables are what verify checks.
	ferr := s.db.Flush()
	err := s.db.Close()
	if err == nil {
		err = ferr
	}
	s.unlock()
	return err
}

func (s *Store) tmpDir() string { return s.fs.PathJoin(s.dir, "tmp") }

func (s *Store) cleanTmp() {
	names, _ := s.fs.List(s.tmpDir())
	for _, n := range names {
		_ = s.fs.Remove(s.fs.PathJoin(s.tmpDir(), n))
	}
}

// lockPath is the file whose flock marks the owner of a store directory.
func lockPath(dir string) string { return filepath.Join(dir, "ckptfs.lock") }

// lockDir takes an exclusive flock on the store directory so that a second
// process gets a clear ErrStoreBusy instead of Pebble's lock error.
func (s *Store) lockDir(create bool) error {
	isStore, err := isStoreDir(s.dir)
	if err != nil {
		return err
	}
	if !isStore {
		if fi, err := os.Stat(s.dir); err == nil && !fi.IsDir() {
			return fmt.Errorf("%w: %s is not a directory", ErrNoStore, s.dir)
		}
		if !create {
			return fmt.Errorf("%w at %s (create one with `ckptfs import` or `ckptfs record`)", ErrNoStore, s.dir)
		}
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("creating store %s: %w", s.dir, err)
	}
	fd, err := unix.Open(lockPath(s.dir), unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("store %s: %w", s.dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		owner := readOwner(fd)
		unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w (%s, %s)", ErrStoreBusy, s.dir, owner)
		}
		return fmt.Errorf("locking store %s: %w", s.dir, err)
	}
	_ = unix.Ftruncate(fd, 0)
	_, _ = unix.Pwrite(fd, []byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	s.lockFD = fd
	return nil
}

// isStoreDir reports whether dir holds a Pebble database. A directory this
// process may not read is an error (permission denied), not "no store".
func isStoreDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store %s: %w", dir, unwrapPath(err))
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil && !errors.Is(err, unix.ENOTDIR) {
		return false, fmt.Errorf("store %s: %w", dir, unwrapPath(err))
	}
	for _, n := range names {
		if strings.HasPrefix(n, "MANIFEST-") {
			return true, nil
		}
	}
	return false, nil
}

// unwrapPath drops the *PathError around an errno, whose path the caller's
// message already names.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

func readOwner(fd int) string {
	buf := make([]byte, 32)
	n, _ := unix.Pread(fd, buf, 0)
	pid := strings.TrimSpace(string(buf[:max(n, 0)]))
	if pid == "" {
		return "owner unknown"
	}
	return "pid " + pid
}

func (s *Store) unlock() {
	if s.lockFD >= 0 {
		unix.Close(s.lockFD)
		s.lockFD = -1
	}
}

// Runs lists every run, by name.
func (s *Store) Runs() ([]RunInfo, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: []byte{byte(kindName)}, UpperBound: []byte{byte(kindName) + 1}})
	if err != nil {
		return nil, wrapRead(err, "run names")
	}
	var names []string
	for it.First(); it.Valid(); it.Next() {
		names = append(names, string(it.Key()[1:]))
	}
	if err := it.Close(); err != nil {
		return nil, wrapRead(err, "run names")
	}
	runs := make([]RunInfo, 0, len(names))
	for _, n := range names {
		ri, err := s.Run(n)
		if err != nil {
			return nil, err
		}
		runs = append(runs, ri)
	}
	return runs, nil
}

// Run returns the run called name.
func (s *Store) Run(name string) (RunInfo, error) {
	if err := ValidRunName(name); err != nil {
		return RunInfo{}, err
	}
	id, err := s.runID(name)
	if err != nil {
		return RunInfo{}, err
	}
	return s.runInfo(id)
}

func (s *Store) runID(name string) (RunID, error) {
	v, closer, err := s.db.Get(appendNameKey(nil, name))
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, fmt.Errorf("%w: %q", ErrRunNotFound, name)
	}
	if err != nil {
		return 0, wrapRead(err, "run name "+name)
	}
	defer closer.Close()
	if len(v) != 4 {
		return 0, corruptf("name record of run %q has %d bytes", name, len(v))
	}
	return RunID(binary.BigEndian.Uint32(v)), nil
}

func (s *Store) runInfo(id RunID) (RunInfo, error) {
	v, closer, err := s.db.Get(appendRunKey(nil, kindRun, id))
	if err != nil {
		if errors.Is(err, pebble.ErrNotFound) {
			return RunInfo{}, corruptf("run %d has a name but no record", id)
		}
		return RunInfo{}, wrapRead(err, "run record")
	}
	var rec RunRecord
	err = json.Unmarshal(v, &rec)
	closer.Close()
	if err != nil {
		return RunInfo{}, corruptf("run %d record: %v", id, err)
	}
	ri := RunInfo{RunRecord: rec, ID: id, Frames: rec.RAMSize / PageSize}
	if ri.QEMUArgs == nil {
		ri.QEMUArgs = metaQEMUArgs(rec.Meta)
	}
	if ri.Checkpoints, err = s.countIntervalKeys(kindCommit, id); err != nil {
		return RunInfo{}, err
	}
	if ri.Intervals, err = s.countIntervalKeys(kindWS, id); err != nil {
		return RunInfo{}, err
	}
	return ri, nil
}

// countIntervalKeys returns 1 + the last interval with a key of kind, relying
// on commits (and working sets) being contiguous from 0.
func (s *Store) countIntervalKeys(kind keyKind, id RunID) (int, error) {
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: appendRunKey(nil, kind, id), UpperBound: runPrefixEnd(kind, id)})
	if err != nil {
		return 0, wrapRead(err, "interval keys")
	}
	n := 0
	if it.Last() {
		k := it.Key()
		if len(k) != 9 {
			it.Close()
			return 0, corruptf("key %s", keyString(k))
		}
		n = int(binary.BigEndian.Uint32(k[5:])) + 1
	}
	if err := it.Close(); err != nil {
		return 0, wrapRead(err, "interval keys")
	}
	return n, nil
}

// DeleteRun removes a run and everything stored for it, atomically.
func (s *Store) DeleteRun(name string) error {
	if err := ValidRunName(name); err != nil {
		return err
	}
	// s.mu is held until the deletion is durable: PackRun registers under
	// it, so no pack can start on a run that is going away.
	s.mu.Lock()
	defer s.mu.Unlock()
	busy, packing := s.mu.writers[name], s.mu.packing[name] != nil
	if busy {
		return fmt.Errorf("run %q is being written; stop the recording first", name)
	}
	if packing {
		// A pack ingested after the deletion would outlive the run.
		return fmt.Errorf("run %q is being packed; try again when `ckptfs pack` or the recording has finished", name)
	}
	id, err := s.runID(name)
	if err != nil {
		return err
	}
	b := s.db.NewBatch()
	defer b.Close()
	_ = b.Delete(appendNameKey(nil, name), nil)
	for _, k := range []keyKind{kindBlob, kindCommit, kindDevState, kindLog, kindPack, kindRun, kindVersion, kindWS} {
		_ = b.DeleteRange(appendRunKey(nil, k, id), runPrefixEnd(k, id), nil)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("removing run %q: %w", name, err)
	}
	s.removed.Store(id, struct{}{})
	s.generation.Add(1)
	// Reclaim the space in the background; the deletion is already durable.
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		for _, k := range []keyKind{kindBlob, kindPack, kindLog} {
			_ = s.db.Compact(s.bgCtx, appendRunKey(nil, k, id), runPrefixEnd(k, id), false)
		}
	}()
	return nil
}

// CompactRun compacts the keys of run name so that reads of it touch as few
// tables as possible: after many small commits a run's versions sit in many
// levels. RunWriter.Close starts it in the background; it is safe to call at
// any time and changes no data.
func (s *Store) CompactRun(ctx context.Context, name string) error {
	id, err := s.runID(name)
	if err != nil {
		return err
	}
	return s.compactRun(ctx, id)
}

func (s *Store) compactRun(ctx context.Context, id RunID) error {
	for _, k := range []keyKind{kindVersion, kindBlob} {
		if err := s.db.Compact(ctx, appendRunKey(nil, k, id), runPrefixEnd(k, id), true); err != nil {
			return fmt.Errorf("compacting run %d: %w", id, err)
		}
	}
	return nil
}

// compactRunInBackground compacts a finished run while the store is open.
func (s *Store) compactRunInBackground(id RunID) {
	s.bg.Add(1)
	go func() {
		defer s.bg.Done()
		if err := s.compactRun(s.bgCtx, id); err != nil && s.bgCtx.Err() == nil {
			s.log.Warn("store: compacting a finished run", "err", err)
		}
	}()
}

// Flush writes memtables (small checkpoints are committed as batches) to
// table files; benchmarks call it so that cold reads really come from disk.
func (s *Store) Flush() error { return s.db.Flush() }

// quietLogger sends Pebble's informational lines to slog at debug level,
// and its error lines as one line each (no stack traces), rate-limited.
type quietLogger struct {
	l *slog.Logger
	h *health
}

func (q quietLogger) Infof(format string, args ...any) {
	q.l.Debug(fmt.Sprintf(format, args...), "component", "pebble")
}
func (q quietLogger) Errorf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	q.h.errorLine(msg, "component", "pebble")
}

// Fatalf ends the process, as Pebble requires (a failed WAL write, on a
// full disk say, leaves the store unusable until it is opened again): one
// line on stderr, without the details and stack traces after it.
func (q quietLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	fmt.Fprintf(fatalOut, "ckptfs: fatal store error: %s\n", msg)
	fatalExit(1)
}

// fatalOut and fatalExit are where Fatalf reports and how it ends; tests
// replace them.
var (
	fatalOut  io.Writer = os.Stderr
	fatalExit           = os.Exit
)

func compressionProfile(name string) (*sstable.CompressionProfile, error) {
	switch strings.ToLower(name) {
	case "", "snappy":
		return sstable.SnappyCompression, nil
	case "minlz":
		return sstable.MinLZCompression, nil
	case "zstd":
		return sstable.ZstdCompression, nil
	case "none":
		return sstable.NoCompression, nil
	}
	return nil, fmt.Errorf("%w: unknown compression %q (snappy, minlz, zstd, none)", ErrBadInput, name)
}

var _ io.Closer = (*Store)(nil)

// DefaultCacheSize is the block cache of a store whose Options give none.
const DefaultCacheSize = 512 << 20

// CacheCapacity is the most bytes the store's block cache holds.
func (s *Store) CacheCapacity() int64 { return s.cacheCap }

// CacheSize is the number of bytes in the store's block cache (0 once
// closed).
func (s *Store) CacheSize() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return 0
	}
	return s.cache.Size()
}

// DropCache empties the store's block cache (blocks that readers hold stay
// until they let go), so that the next reads go to the files, which a
// drop_caches can then make cold. Benchmarks use it to measure cold loads.
func (s *Store) DropCache() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.closed {
		return
	}
	release := s.cache.Reserve(int(s.cache.MaxSize()))
	release()
}

// sequentialFS opens files without Pebble's FADV_RANDOM hint. A frame table
// is read in long sequential runs (a full image, a working set of one
// interval), which the kernel's adaptive readahead serves several times
// faster; its readahead stays small for the random reads of faults.
type sequentialFS struct{ vfs.FS }

func (fs sequentialFS) Open(name string, opts ...vfs.OpenOption) (vfs.File, error) {
	kept := opts[:0:0]
	for _, o := range opts {
		if o != vfs.RandomReadsOption {
			kept = append(kept, o)
		}
	}
	return fs.FS.Open(name, kept...)
}
