package kvmrec

import (
	"fmt"
)

// capture is one checkpoint: the changed frames, each part in increasing
// pfn order, no pfn in two parts (dropped frames aside).
type capture struct {
	parts []*staging
	ws    []span // W of the interval before, when hasWS
	hasWS bool
	preWS []span // what precopy found touched (present or deferred)
	// precopiedAll: checkpoint 0's pre-copy read every data frame.
	precopiedAll bool
	dev          []byte
	stats        CheckpointStats

	// Deterministic recordings: the instruction count at the checkpoint,
	// the frames whose code ran in the interval before (the plugin), and
	// the restore trial of the checkpoint before, whose frames belong to
	// ws as well.
	icount       uint64
	exec         []span
	restoreTrial chan trialResult
}

// addRestoreSet waits for the restore trial of the checkpoint before and
// adds its frames to the working set.
func (c *capture) addRestoreSet() error {
	if c.restoreTrial == nil {
		return nil
	}
	res := <-c.restoreTrial
	c.restoreTrial = nil
	if res.err != nil {
		return fmt.Errorf("working set of interval %d: %w", c.stats.Checkpoint-1, res.err)
	}
	c.ws = unionSpans(c.ws, res.frames)
	return nil
}

func (c *capture) chunks() [][]byte {
	var out [][]byte
	for _, p := range c.parts {
		out = append(out, p.chunks...)
	}
	return out
}

func (c *capture) frames() int {
	n := 0
	for _, p := range c.parts {
		for j := range p.pfns {
			if !p.dropped(j) {
				n++
			}
		}
	}
	return n
}

// each calls fn for every frame in increasing pfn order, merging the parts.
func (c *capture) each(fn func(pfn uint64, frame []byte) error) error {
	pos := make([]int, len(c.parts))
	for {
		best := -1
		for k, p := range c.parts {
			for pos[k] < len(p.pfns) && p.dropped(pos[k]) {
				pos[k]++
			}
			if pos[k] < len(p.pfns) && (best < 0 || p.pfns[pos[k]] < c.parts[best].pfns[pos[best]]) {
				best = k
			}
		}
		if best < 0 {
			return nil
		}
		p, j := c.parts[best], pos[best]
		if err := fn(p.pfns[j], p.frame(j)); err != nil {
			return err
		}
		pos[best]++
	}
}
