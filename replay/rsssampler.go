package replay

import (
	"sync"
	"time"
)

// rssSampler sums the VmRSS of the tracked processes every 20 ms and keeps
// the largest sum; the same for their guest-RAM mappings and working sets.
type rssSampler struct {
	mu      sync.Mutex
	mount   string
	pids    map[int]uint64 // tracked QEMU → |W_I| in bytes
	peak    uint64
	peakRAM uint64 // the same for the guest-RAM mappings alone
	peakWS  uint64 // the largest sum of |W_I| of the QEMUs tracked together
	quit    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newRSSSampler(mount string) *rssSampler {
	s := &rssSampler{mount: mount, pids: map[int]uint64{}, quit: make(chan struct{}), stopped: make(chan struct{})}
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-s.quit:
				return
			case <-t.C:
				s.mu.Lock()
				s.sampleLocked()
				s.mu.Unlock()
			}
		}
	}()
	return s
}

func (s *rssSampler) sampleLocked() {
	var sum, ram, ws uint64
	for pid, w := range s.pids {
		ws += w
		if v, ok := procStatusKB(pid, "VmRSS"); ok {
			sum += v
		}
		if v, ok := guestRAMRss(pid, s.mount); ok {
			ram += v
		}
	}
	s.peak = max(s.peak, sum)
	s.peakRAM = max(s.peakRAM, ram)
	s.peakWS = max(s.peakWS, ws)
}

// track adds pid (running), whose working set has wsBytes, or, after a
// last sample, removes it.
func (s *rssSampler) track(pid int, running bool, wsBytes uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if running {
		s.pids[pid] = wsBytes
		return
	}
	s.sampleLocked()
	delete(s.pids, pid)
}

// stop ends the sampling and returns the peak.
func (s *rssSampler) stop() uint64 {
	s.once.Do(func() { close(s.quit) })
	<-s.stopped
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peak
}
