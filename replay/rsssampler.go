package replay

import (
	"sync"
	"time"
)

// rssSampler sums the VmRSS of the tracked processes every 20 ms and keeps
// the largest sum.
type rssSampler struct {
	mu      sync.Mutex
	mount   string
	pids    map[int]bool
	peak    uint64
	peakRAM uint64 // the same for the guest-RAM mappings alone
	quit    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newRSSSampler(mount string) *rssSampler {
	s := &rssSampler{mount: mount, pids: map[int]bool{}, quit: make(chan struct{}), stopped: make(chan struct{})}
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
	var sum, ram uint64
	for pid := range s.pids {
		if v, ok := procStatusKB(pid, "VmRSS"); ok {
			sum += v
		}
		if v, ok := guestRAMRss(pid, s.mount); ok {
			ram += v
		}
	}
	s.peak = max(s.peak, sum)
	s.peakRAM = max(s.peakRAM, ram)
}

// track adds pid (running) or, after a last sample, removes it.
func (s *rssSampler) track(pid int, running bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if running {
		s.pids[pid] = true
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
