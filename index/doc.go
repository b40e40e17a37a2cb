// Package index is the ckptfs store: frame versions, working sets, runs and
// their metadata in a Pebble LSM. It imports no other package of ckptfs and
// is the only package that imports Pebble.
//
// # Model
//
// A run is a series of checkpoints 0..n-1 of one guest's RAM. A frame version
// (i, pfn) is the content of pfn at checkpoint i, stored only if it changed
// during interval i-1 (every non-zero frame for checkpoint 0). The content of
// pfn at checkpoint i is the newest version (j, pfn) with j <= i; no version
// means an all-zero frame. W_i, the working set of interval i, is stored with
// checkpoint i+1, when it becomes known.
//
// # Invariants
//
//   - Commit is atomic and durable: a checkpoint's frames, versions, working
//     set, device state and commit record are written in one Pebble ingest
//     (or, for small checkpoints, one synced batch). A reader sees all of a
//     checkpoint or none of it; a crash at any moment leaves the store as of
//     the last commit. A run becomes visible with its checkpoint 0.
//   - Checkpoints of a run are committed in order 0, 1, 2, ... without gaps,
//     and never change once committed.
//   - All-zero frames are never stored. Identical contents within a run are
//     stored once (xxh3-128 content hash); versions refer to the blob.
//   - Every stored frame carries an xxh3-64 checksum that is verified on every
//     read; a mismatch is an error wrapping ErrCorrupt, never wrong bytes.
//     Pebble's own block checksums are reported the same way (IsCorruption).
//   - A damaged file is noticed once (health.go): one log line per file,
//     other repeated error lines at most once a minute, and compactions
//     that fail on corruption are retried with a backoff (1 s doubling to
//     5 min) instead of at once, so a damaged store never spins or floods
//     the log. A whole-store Verify checks every block of every table.
//   - A run removed (DeleteRun) while a Checkpoint handle of it is open is
//     not damage: every later read of the handle fails with ErrRunRemoved
//     (which is also ErrRunNotFound, never IsCorruption) and logs nothing.
//   - One process owns a store: Open takes an flock on ckptfs.lock and a
//     second Open fails with ErrStoreBusy.
//   - A working-set pack (pack.go) is derived data: W_i's frames at
//     checkpoint i, copied contiguously so that a sparse load reads a few
//     large blocks. It is built after the checkpoints it copies are
//     committed, ingested whole or not at all, read only for ranges that
//     lie inside W_i, and checked by Verify against the frame versions. A
//     damaged pack costs one log line per checkpoint handle, which then
//     reads from the versions (slower, never wrong bytes); a missing pack
//     only costs speed. Readers outside index never see a pack: a
//     Checkpoint loads W_i once and serves the sparse view
//     (ReadWorkingSet) and W_i in pieces (WorkingSetPieces, ReadPiece)
//     from the pack or the versions itself (wsread.go).
//   - The replay log of a deterministic run (replaylog.go) is append-only:
//     the bytes QEMU appended during interval i-1 are committed with
//     checkpoint i, in the same batch or ingest, and the tail after the
//     last checkpoint with AppendReplayLog. Committed bytes never change,
//     the size never shrinks, and a log marked complete takes no more
//     bytes. Every chunk carries an xxh3-64 checksum, checked on every read
//     like a frame's. A ReplayLog handle reads the log as of its opening.
//     Instruction counts (CheckpointStats.ICount) never decrease.
//   - A store holds guest memory: every file it writes (tables, WAL,
//     manifest, lock files, tmp/) is owner-only, 0600, and every directory
//     it makes 0700, whatever the umask (perm.go wraps Pebble's vfs). A
//     store directory that already exists keeps the mode its user gave it,
//     but what is inside is owner-only all the same; Open takes group and
//     other bits off files an older version left readable.
//   - Frame and pack tables are written with O_DIRECT (direct.go): the page
//     cache gains nothing from holding what was just written, and filling
//     it was most of the store's write time on virtual machines.
//
// Key layout is documented in keys.go, the only file that encodes keys;
// frame values are encoded and checked in values.go.
package index
