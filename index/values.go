package index

import (
	"encoding/binary"
	"fmt"

	"github.com/zeebo/xxh3"
)

// Frame values, beside the keys of keys.go and as much part of the on-disk
// format. A stored frame is its xxh3-64 checksum (little-endian) followed by
// its PageSize bytes:
//
//	'b' blob   xxh3-64(frame) u64 | frame
//	'a' pack   n × xxh3-64(frame) u64 | n frames      (1 ≤ n ≤ packFrames)
//
// Every reader checks the checksum of each frame it returns; the decoders
// below are the only code that knows where it sits.

const (
	// checksumLen is the checksum in front of a frame.
	checksumLen = 8
	// frameValueLen is the length of a blob value.
	frameValueLen = checksumLen + PageSize
)

// frameSum is the checksum stored with a frame.
func frameSum(frame []byte) uint64 { return xxh3.Hash(frame) }

// appendFrameValue appends the blob value of frame (PageSize bytes).
func appendFrameValue(dst, frame []byte) []byte {
	dst = binary.LittleEndian.AppendUint64(dst, frameSum(frame))
	return append(dst, frame...)
}

// decodeFrameValue returns the frame of blob value v after checking its
// length and checksum. The frame aliases v. The error says what is wrong,
// without saying where; callers name the key.
func decodeFrameValue(v []byte) ([]byte, error) {
	if len(v) != frameValueLen {
		return nil, fmt.Errorf("has %d bytes, want %d", len(v), frameValueLen)
	}
	frame := v[checksumLen:]
	if binary.LittleEndian.Uint64(v) != frameSum(frame) {
		return nil, fmt.Errorf("checksum mismatch")
	}
	return frame, nil
}

// appendPackValue appends the pack chunk value of frames, a whole number
// (1..packFrames) of frames in slot order.
func appendPackValue(dst, frames []byte) []byte {
	n := len(frames) / PageSize
	for j := 0; j < n; j++ {
		dst = binary.LittleEndian.AppendUint64(dst, frameSum(frames[j*PageSize:(j+1)*PageSize]))
	}
	return append(dst, frames...)
}

// packValue is a pack chunk value whose shape was checked; the checksum of
// each frame is checked when the frame is taken.
type packValue struct {
	v []byte
	n int
}

// decodePackValue checks that v holds 1..packFrames frames with their
// checksums.
func decodePackValue(v []byte) (packValue, error) {
	n := len(v) / frameValueLen
	if len(v)%frameValueLen != 0 || n == 0 || n > packFrames {
		return packValue{}, fmt.Errorf("has %d bytes, not 1 to %d frames", len(v), packFrames)
	}
	return packValue{v, n}, nil
}

// frames is the number of frames in the chunk.
func (p packValue) frames() int { return p.n }

// frame returns the frame in slot after checking its checksum; it aliases
// the value.
func (p packValue) frame(slot int) ([]byte, error) {
	if slot < 0 || slot >= p.n {
		return nil, fmt.Errorf("has no slot %d of %d", slot, p.n)
	}
	f := p.v[p.n*checksumLen+slot*PageSize:][:PageSize]
	if binary.LittleEndian.Uint64(p.v[slot*checksumLen:]) != frameSum(f) {
		return nil, fmt.Errorf("checksum mismatch in slot %d", slot)
	}
	return f, nil
}
