package kvmrec

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// execCounters is the file the working-set plugin (kvmrec/wsplugin) counts
// block executions in: one little-endian uint64 per frame. The plugin adds
// to it from QEMU's vCPU thread; the recorder reads and zeroes it only while
// the VM is stopped, so the two never race.
type execCounters struct {
	mem []byte
}

// createExecCounters makes a zeroed counters file for frames frames,
// owner-only, and maps it.
func createExecCounters(path string, frames uint64) (*execCounters, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("exec counters: %w", err)
	}
	defer f.Close()
	if err := f.Truncate(int64(frames * 8)); err != nil {
		return nil, fmt.Errorf("exec counters: %w", err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(frames*8), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("exec counters: mmap: %w", err)
	}
	return &execCounters{mem: mem}, nil
}

// take returns the frames whose code ran since the last take, and zeroes
// their counters.
func (e *execCounters) take() []span {
	var out []span
	for i := 0; i+8 <= len(e.mem); i += 8 {
		if binary.LittleEndian.Uint64(e.mem[i:]) != 0 {
			p := uint64(i / 8)
			out = appendSpan(out, span{p, p + 1})
			clear(e.mem[i : i+8])
		}
	}
	return out
}

func (e *execCounters) close() {
	if e != nil && e.mem != nil {
		_ = unix.Munmap(e.mem)
		e.mem = nil
	}
}
