package kvmrec

import (
	"time"

	"github.com/zeebo/xxh3"
)

// precopy does most of the pause's work before the stop, with the VM
// running (see doc.go, "Pre-copy"). It reads the pagemap, unmaps every
// present frame, and only then hashes the present and deferred frames and
// copies the changed ones. A frame written after its unmap faults, is
// present again at the stop, and is scanned again in the pause; any other
// frame holds at the stop what precopy read.
//
// Checkpoint 0 has no last checkpoint: the prepass has already emptied the
// VMM's page table, so precopy reads every data frame instead, and the
// pause scans only what is present again. Without it checkpoint 0 copies
// the whole RAM while the VM is stopped. A frame punched after the data walk keeps its pre-copied
// content in checkpoint 0 and is zero from a later checkpoint on (see
// punched).
func (r *recorder) precopy(c *capture, i int) error {
	t := time.Now()
	var cands []span
	if i == 0 {
		data, err := dataSpans(r.ram, r.frames)
		if err != nil {
			return err
		}
		cands = data
		c.precopiedAll = true
	} else {
		present, err := r.readPagemap()
		if err != nil {
			return err
		}
		// No gaps: a frame absent at the pagemap read may be written
		// before the pageout; unmapping it would hide that write.
		if err := r.pageout(present, 0); err != nil {
			return err
		}
		// The deferred frames were unmapped by startLate (waitLate):
		// they can be read now too.
		c.preWS = unionSpans(present, r.late)
		r.late = nil
		cands = c.preWS
	}
	parts, err := r.scanAll(cands, nil, true)
	c.parts = append(c.parts, parts...)
	c.stats.Phases.Precopy = time.Since(t)
	c.stats.PrecopyScanned = spanFrames(cands)
	c.stats.Precopied = uint64(framesIn(parts))
	return err
}

// settlePrecopy reconciles the pre-copied frames with the pause's scan of
// cands: a frame scanned again is dropped from the pre-copy (the pause's
// copy, or no copy when it is back to its content at the last checkpoint,
// is the truth); the hash of every other pre-copied frame becomes its hash
// at this checkpoint.
func (c *capture) settlePrecopy(cands []span, hashes []xxh3.Uint128) {
	for _, p := range c.parts {
		if !p.pre {
			continue
		}
		p.drop = make([]bool, len(p.pfns))
		k := 0
		for j, pfn := range p.pfns {
			for k < len(cands) && cands[k].end <= pfn {
				k++
			}
			if k < len(cands) && cands[k].start <= pfn {
				p.drop[j] = true
				continue
			}
			hashes[pfn] = p.hashes[j]
		}
	}
}
