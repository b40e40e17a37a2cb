package kvmrec

import (
	"context"
	"fmt"
)

// requestTranslationFlush makes QEMU translate every block afresh after
// the VM resumes, so that each interval reads the guest code it runs from
// guest RAM (which the host page table sees) and counts it in the plugin's
// counters; a block cached from an earlier interval would do neither.
//
// QEMU 7.2 has no monitor command that flushes the translation cache, but
// a plugin reset does, from the vCPU thread. The recorder bumps the
// generation in the counters file, and switches TCG's block chaining on or
// off (HMP `log nochain`): the flags of a block are part of its cache key,
// so the first block looked up after the resume misses the cache and is
// translated, and the plugin, seeing the new generation in that
// translation, resets itself. Chaining changes no guest state.
//
// So every other interval runs unchained, which costs nothing measurable on
// a busy guest (test/integration BenchmarkDeterministicRecording). Chaining
// must not be switched back on right after the flush: blocks translated
// unchained in between would stay cached, and the next pause's switch to
// unchained would find them and flush nothing.
func (r *recorder) requestTranslationFlush(ctx context.Context) error {
	r.det.exec.nextGeneration()
	r.det.noChain = !r.det.noChain
	item := "none"
	if r.det.noChain {
		item = "nochain"
	}
	if _, err := r.hmp(ctx, "log "+item); err != nil {
		return fmt.Errorf("switching block chaining (log %s): %w", item, err)
	}
	return nil
}
