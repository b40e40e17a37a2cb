package kvmrec

import "testing"

func TestReclaimHazards(t *testing.T) {
	// Only reports: what is found depends on the machine.
	for _, h := range reclaimHazards() {
		t.Logf("hazard: %s", h)
	}
}
