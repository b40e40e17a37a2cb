// Package replaypos reads the record/replay position that QEMU saves with a
// checkpoint's device state: the instruction count and the offset in the
// replay log. The recorder waits for the log to reach it before it commits
// a checkpoint, and a replay needs the log up to it.
package replaypos

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// Position is the record/replay state QEMU saved with a checkpoint's
// device state: the "replay" vmstate section of <i>.dev.
type Position struct {
	// ICount is the instruction count at the checkpoint (current_icount).
	ICount uint64
	// LogOffset is the byte offset in replay.log QEMU had reached
	// (file_offset): a replay up to this checkpoint needs the log's bytes
	// before it, and QEMU reads the next event header at it.
	LogOffset uint64
}

// ErrNoSection is returned by Parse for device state that
// holds no "replay" section (QEMU did not run in record mode).
var ErrNoSection = errors.New("replay: device state has no \"replay\" section")

// replaySectionHeader is what precedes the section's fields in a QEMU
// migration stream: QEMU_VM_SECTION_FULL (0x04), the section id (u32 BE),
// the id string with its length byte, then instance_id and version_id (u32
// BE each).
var replayIDStr = []byte("\x06replay")

// Parse finds the "replay" vmstate section in a QEMU migration
// stream (a .dev file saved with xen-save-devices-state) and returns its
// instruction count and replay-log offset. It knows version 2 of the section
// (QEMU 5.2 to at least 8.x):
//
//	int64  cached_clock[2]  (REPLAY_CLOCK_COUNT on x86)
//	uint64 current_icount
//	int32  instruction_count
//	uint32 data_kind
//	uint32 has_unread_data
//	uint64 file_offset
//
// all big-endian, so file_offset is at byte 36 after version_id.
func Parse(dev []byte) (Position, error) {
	from := 0
	for {
		k := bytes.Index(dev[from:], replayIDStr)
		if k < 0 {
			return Position{}, ErrNoSection
		}
		k += from
		from = k + 1
		// A section header: 0x04, section id, idstr.
		if k < 5 || dev[k-5] != 0x04 {
			continue
		}
		p := k + len(replayIDStr)
		if len(dev) < p+8 {
			return Position{}, fmt.Errorf("replay: device state ends inside the \"replay\" section header")
		}
		version := binary.BigEndian.Uint32(dev[p+4 : p+8])
		if version != 2 {
			return Position{}, fmt.Errorf("replay: device state has \"replay\" section version %d; this ckptfs knows version 2 (QEMU 5.2-8.x)", version)
		}
		f := p + 8
		if len(dev) < f+44 {
			return Position{}, fmt.Errorf("replay: device state ends inside the \"replay\" section")
		}
		return Position{
			ICount:    binary.BigEndian.Uint64(dev[f+16 : f+24]),
			LogOffset: binary.BigEndian.Uint64(dev[f+36 : f+44]),
		}, nil
	}
}
