package kvmrec

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// execCounters is the file the working-set plugin (kvmrec/wsplugin) counts
// block executions in: one little-endian uint64 per frame, then a trailer
// of execTrailerWords words (the generation the recorder bumps at every
// pause to make the plugin flush QEMU's translation cache, then the plugin's
// counts of translated blocks and of flushes). The plugin writes from QEMU's
// vCPU thread; the recorder reads and writes only while the VM is stopped,
// so the two never race.
type execCounters struct {
	mem    []byte
	frames uint64
}

// The trailer words after the per-frame counters, as wsplugin.c numbers them.
const (
	execGenWord = iota
	execTranslatedWord
	execFlushedWord
	execTrailerWords
)

// createExecCounters makes a zeroed counters file for frames frames,
// owner-only, and maps it.
func createExecCounters(path string, frames uint64) (*execCounters, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("exec counters: %w", err)
	}
	defer f.Close()
	size := int64(frames+execTrailerWords) * 8
	if err := f.Truncate(size); err != nil {
		return nil, fmt.Errorf("exec counters: %w", err)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, int(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("exec counters: mmap: %w", err)
	}
	return &execCounters{mem: mem, frames: frames}, nil
}

// take returns the frames whose code ran since the last take, and zeroes
// their counters.
func (e *execCounters) take() []span {
	var out []span
	for i := 0; i < int(e.frames)*8; i += 8 {
		if binary.LittleEndian.Uint64(e.mem[i:]) != 0 {
			p := uint64(i / 8)
			out = appendSpan(out, span{p, p + 1})
			clear(e.mem[i : i+8])
		}
	}
	return out
}

// word returns trailer word w.
func (e *execCounters) word(w int) uint64 {
	return binary.LittleEndian.Uint64(e.mem[(int(e.frames)+w)*8:])
}

// nextGeneration asks the plugin to flush QEMU's translation cache at the
// first translation after the VM resumes.
func (e *execCounters) nextGeneration() {
	off := (int(e.frames) + execGenWord) * 8
	binary.LittleEndian.PutUint64(e.mem[off:], e.word(execGenWord)+1)
}

// translated and flushed are the plugin's running counts of translated
// blocks and of translation-cache flushes.
func (e *execCounters) translated() uint64 { return e.word(execTranslatedWord) }
func (e *execCounters) flushed() uint64    { return e.word(execFlushedWord) }

func (e *execCounters) close() {
	if e != nil && e.mem != nil {
		_ = unix.Munmap(e.mem)
		e.mem = nil
	}
}
