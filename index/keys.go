package index

import (
	"encoding/binary"
	"fmt"
)

// All key encoding of the store lives in this file. Integers are big-endian so
// that byte order is numeric order. The one-byte kind prefixes and the value
// layouts below are part of the on-disk format: never renumber them. The
// frame values ('a', 'b') are encoded and checked in values.go.
//
//	'a' pack      a | run u32 | interval u32 | chunk u32 → n × xxh3-64(frame) u64 | n frames
//	'b' blob      b | run u32 | interval u32 | pfn u64  → xxh3-64(frame) u64 | frame
//	'c' commit    c | run u32 | interval u32            → JSON CheckpointStats
//	'd' devstate  d | run u32 | interval u32            → QEMU migration stream
//	'l' replaylog l | run u32                           → JSON replayLogRecord {size, complete, updated}
//	'l' log chunk l | run u32 | offset u64              → xxh3-64(chunk) u64 | chunk (1..1 MiB bytes)
//	'm' run       m | run u32                           → JSON RunRecord (runfmt)
//	'n' name      n | name                              → run u32
//	's' sequence  s | "run"                             → next run id u32
//	'v' version   v | run u32 | pfn u64 | ^interval u32 → kind u8 | ref interval u32 | ref pfn u64
//	'w' ws        w | run u32 | interval u32            → xxh3-64(bitmap) u64 | roaring portable bitmap
//
// A version key stores the interval inverted so that, for one pfn, the newest
// version sorts first: SeekGE(v|run|pfn|^i) lands on the newest version at or
// before checkpoint i in one seek, however many checkpoints the run has.
// Frame data ('a' packs, 'b' blobs) sorts before every other kind, so that
// an ingested frame or pack table overlaps no meta table (c..w) and Pebble
// places it at the bottom level, where it is never rewritten.
// The presence of the 'c' key is what makes a checkpoint visible; it is always
// written in the same atomic ingest or batch as everything it refers to.
// The replay log of a deterministic run (replaylog.go) is one record, l|run,
// which sorts before the run's chunks, and chunks keyed by the byte offset at
// which they start: the log is append-only, so chunks tile [0, size) without
// gaps or overlap. Both use lower-case 'l' so that they sort after frame data
// and stay out of the frame tables' key range.

// keyKind is the first byte of every key.
type keyKind byte

const (
	kindPack     keyKind = 'a'
	kindBlob     keyKind = 'b'
	kindCommit   keyKind = 'c'
	kindDevState keyKind = 'd'
	kindLog      keyKind = 'l'
	kindRun      keyKind = 'm'
	kindName     keyKind = 'n'
	kindSequence keyKind = 's'
	kindVersion  keyKind = 'v'
	kindWS       keyKind = 'w'
)

// versionKind is the first byte of a version value.
type versionKind byte

const (
	versionZero versionKind = 0 // the frame became all zeros; nothing stored
	versionBlob versionKind = 1 // the content is the blob at (ref interval, ref pfn)
)

const (
	blobKeyLen    = 1 + 4 + 4 + 8
	versionKeyLen = 1 + 4 + 8 + 4
	versionValLen = 1 + 4 + 8
	wsHeaderLen   = 8
	packKeyLen    = 1 + 4 + 4 + 4
	logKeyLen     = 1 + 4 + 8
	logHeaderLen  = 8
)

var sequenceKey = []byte{byte(kindSequence), 'r', 'u', 'n'}

func appendRunKey(dst []byte, kind keyKind, run RunID) []byte {
	dst = append(dst, byte(kind))
	return binary.BigEndian.AppendUint32(dst, uint32(run))
}

// appendIntervalKey encodes the 'c', 'd' and 'w' keys.
func appendIntervalKey(dst []byte, kind keyKind, run RunID, interval uint32) []byte {
	dst = appendRunKey(dst, kind, run)
	return binary.BigEndian.AppendUint32(dst, interval)
}

func appendBlobKey(dst []byte, run RunID, interval uint32, pfn uint64) []byte {
	dst = appendIntervalKey(dst, kindBlob, run, interval)
	return binary.BigEndian.AppendUint64(dst, pfn)
}

// appendPackKey encodes the key of chunk chunk of the working-set pack of
// interval (pack.go).
func appendPackKey(dst []byte, run RunID, interval, chunk uint32) []byte {
	dst = appendIntervalKey(dst, kindPack, run, interval)
	return binary.BigEndian.AppendUint32(dst, chunk)
}

func decodePackKey(k []byte) (run RunID, interval, chunk uint32, ok bool) {
	if len(k) != packKeyLen || keyKind(k[0]) != kindPack {
		return 0, 0, 0, false
	}
	return RunID(binary.BigEndian.Uint32(k[1:])), binary.BigEndian.Uint32(k[5:]), binary.BigEndian.Uint32(k[9:]), true
}

func decodeBlobKey(k []byte) (run RunID, interval uint32, pfn uint64, ok bool) {
	if len(k) != blobKeyLen || keyKind(k[0]) != kindBlob {
		return 0, 0, 0, false
	}
	return RunID(binary.BigEndian.Uint32(k[1:])), binary.BigEndian.Uint32(k[5:]), binary.BigEndian.Uint64(k[9:]), true
}

func appendVersionKey(dst []byte, run RunID, pfn uint64, interval uint32) []byte {
	dst = appendRunKey(dst, kindVersion, run)
	dst = binary.BigEndian.AppendUint64(dst, pfn)
	return binary.BigEndian.AppendUint32(dst, ^interval)
}

func decodeVersionKey(k []byte) (run RunID, pfn uint64, interval uint32, ok bool) {
	if len(k) != versionKeyLen || keyKind(k[0]) != kindVersion {
		return 0, 0, 0, false
	}
	return RunID(binary.BigEndian.Uint32(k[1:])), binary.BigEndian.Uint64(k[5:]), ^binary.BigEndian.Uint32(k[13:]), true
}

func appendVersionValue(dst []byte, kind versionKind, refInterval uint32, refPfn uint64) []byte {
	dst = append(dst, byte(kind))
	dst = binary.BigEndian.AppendUint32(dst, refInterval)
	return binary.BigEndian.AppendUint64(dst, refPfn)
}

func decodeVersionValue(v []byte) (kind versionKind, refInterval uint32, refPfn uint64, err error) {
	if len(v) != versionValLen || versionKind(v[0]) > versionBlob {
		return 0, 0, 0, corruptf("version value of %d bytes, kind %d", len(v), firstByte(v))
	}
	return versionKind(v[0]), binary.BigEndian.Uint32(v[1:]), binary.BigEndian.Uint64(v[5:]), nil
}

func firstByte(b []byte) int {
	if len(b) == 0 {
		return -1
	}
	return int(b[0])
}

// appendLogKey encodes the key of the replay-log chunk that starts at byte
// off; appendRunKey(nil, kindLog, run) is the key of the log's record.
func appendLogKey(dst []byte, run RunID, off uint64) []byte {
	dst = appendRunKey(dst, kindLog, run)
	return binary.BigEndian.AppendUint64(dst, off)
}

func decodeLogKey(k []byte) (run RunID, off uint64, ok bool) {
	if len(k) != logKeyLen || keyKind(k[0]) != kindLog {
		return 0, 0, false
	}
	return RunID(binary.BigEndian.Uint32(k[1:])), binary.BigEndian.Uint64(k[5:]), true
}

func appendNameKey(dst []byte, name string) []byte {
	return append(append(dst, byte(kindName)), name...)
}

// runPrefixEnd returns the smallest key greater than every key of kind for run.
func runPrefixEnd(kind keyKind, run RunID) []byte {
	return appendRunKey(nil, kind, run+1)
}

// keyString prints a key readably, for errors and debugging.
func keyString(k []byte) string {
	if len(k) == 0 {
		return "<empty>"
	}
	switch keyKind(k[0]) {
	case kindBlob:
		if r, i, p, ok := decodeBlobKey(k); ok {
			return fmt.Sprintf("blob/run%d/ckpt%d/pfn%d", r, i, p)
		}
	case kindVersion:
		if r, p, i, ok := decodeVersionKey(k); ok {
			return fmt.Sprintf("version/run%d/pfn%d/ckpt%d", r, p, i)
		}
	case kindPack:
		if r, i, c, ok := decodePackKey(k); ok {
			return fmt.Sprintf("pack/run%d/ckpt%d/chunk%d", r, i, c)
		}
	case kindCommit, kindDevState, kindWS:
		if len(k) == 9 {
			return fmt.Sprintf("%c/run%d/%d", k[0], binary.BigEndian.Uint32(k[1:]), binary.BigEndian.Uint32(k[5:]))
		}
	case kindLog:
		if r, off, ok := decodeLogKey(k); ok {
			return fmt.Sprintf("replaylog/run%d/offset%d", r, off)
		}
		if len(k) == 5 {
			return fmt.Sprintf("replaylog/run%d", binary.BigEndian.Uint32(k[1:]))
		}
	case kindRun:
		if len(k) == 5 {
			return fmt.Sprintf("run/%d", binary.BigEndian.Uint32(k[1:]))
		}
	case kindName:
		return fmt.Sprintf("name/%q", k[1:])
	}
	return fmt.Sprintf("raw/%x", k)
}

// keyWords says in a user's words what key k holds, e.g. "frames of run
// r1, checkpoint 3"; name gives a run's name for its ID (or "").
func keyWords(k []byte, name func(RunID) string) string {
	if len(k) == 0 {
		return "no key"
	}
	run := func() string {
		if len(k) < 5 {
			return "a run"
		}
		id := RunID(binary.BigEndian.Uint32(k[1:]))
		if n := name(id); n != "" {
			return "run " + n
		}
		return fmt.Sprintf("run #%d (removed or unnamed)", id)
	}
	at := func(what string) string {
		if len(k) < 9 {
			return what + " of " + run()
		}
		return fmt.Sprintf("%s of %s, checkpoint %d", what, run(), binary.BigEndian.Uint32(k[5:]))
	}
	switch keyKind(k[0]) {
	case kindPack:
		return at("working-set pack")
	case kindBlob:
		return at("frames")
	case kindCommit:
		return at("commit record")
	case kindDevState:
		return at("device state")
	case kindWS:
		if len(k) >= 9 {
			return fmt.Sprintf("working set of %s, interval %d", run(), binary.BigEndian.Uint32(k[5:]))
		}
		return "working sets of " + run()
	case kindVersion:
		if _, _, i, ok := decodeVersionKey(k); ok {
			return fmt.Sprintf("frame versions of %s, checkpoint %d", run(), i)
		}
		return "frame versions of " + run()
	case kindLog:
		if _, off, ok := decodeLogKey(k); ok {
			return fmt.Sprintf("replay log of %s at offset %d", run(), off)
		}
		return "replay log of " + run()
	case kindRun:
		return "the record of " + run()
	case kindName:
		return fmt.Sprintf("the name of run %q", k[1:])
	case kindSequence:
		return "the run sequence"
	}
	return "unknown key " + keyString(k)
}

// recordWords names the one record k in a user's words, down to its pfn
// or chunk: "frame version of run r1, checkpoint 3, pfn 17".
func recordWords(k []byte, name func(RunID) string) string {
	if r, i, p, ok := decodeBlobKey(k); ok {
		return fmt.Sprintf("frame of run %s, checkpoint %d, pfn %d", name(r), i, p)
	}
	if r, p, i, ok := decodeVersionKey(k); ok {
		return fmt.Sprintf("frame version of run %s, checkpoint %d, pfn %d", name(r), i, p)
	}
	if r, i, c, ok := decodePackKey(k); ok {
		return fmt.Sprintf("working-set pack of run %s, checkpoint %d, chunk %d", name(r), i, c)
	}
	return keyWords(k, name)
}

// keyWordsAfter says in a user's words where a scan that last read key k
// stopped: "frames of run r1, checkpoint 3, after pfn 17".
func keyWordsAfter(k []byte, name func(RunID) string) string {
	if r, i, p, ok := decodeBlobKey(k); ok {
		return fmt.Sprintf("%s, checkpoint %d, after pfn %d", kindWords(kindBlob, name(r)), i, p)
	}
	if r, p, _, ok := decodeVersionKey(k); ok {
		return fmt.Sprintf("%s, after pfn %d", kindWords(kindVersion, name(r)), p)
	}
	if r, i, c, ok := decodePackKey(k); ok {
		return fmt.Sprintf("working-set pack of run %s, checkpoint %d, after chunk %d", name(r), i, c)
	}
	if r, off, ok := decodeLogKey(k); ok {
		return fmt.Sprintf("replay log of run %s, after offset %d", name(r), off)
	}
	return "the records after " + keyWords(k, name)
}

// kindWords names the records of kind for run name, for messages.
func kindWords(kind keyKind, name string) string {
	what := map[keyKind]string{kindPack: "working-set packs", kindBlob: "frames", kindCommit: "commit records",
		kindDevState: "device states", kindWS: "working sets", kindVersion: "frame versions", kindRun: "record",
		kindLog: "replay log"}[kind]
	if what == "" {
		what = fmt.Sprintf("%c records", kind)
	}
	return what + " of run " + name
}
