package index

import (
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// A damaged store must never turn into a busy loop or a log flood. Pebble
// retries a failed compaction as soon as it can (it keeps no backoff for
// L0), so a compaction that reads a damaged table fails, is picked again at
// once, and fails again: a core and a log line each time. health is where
// the store notices such damage once: one log line per damaged file, other
// repeated error lines at most once a minute, and compactions paused with
// an exponential backoff after each one that failed on corruption.
type health struct {
	log   *slog.Logger
	sched *backoffScheduler

	mu struct {
		sync.Mutex
		damaged map[string]bool // files reported damaged
		// rate-limited log lines: when each was last logged and how many
		// were dropped since
		last       map[string]time.Time
		suppressed map[string]int
	}
}

// logInterval is the least time between two log lines of the same kind.
const logInterval = time.Minute

func newHealth(log *slog.Logger) *health {
	h := &health{log: log, sched: newBackoffScheduler()}
	h.mu.damaged = map[string]bool{}
	h.mu.last = map[string]time.Time{}
	h.mu.suppressed = map[string]int{}
	return h
}

// damaged logs that file is damaged, once per file.
func (h *health) damaged(file, detail string) {
	h.mu.Lock()
	first := !h.mu.damaged[file]
	h.mu.damaged[file] = true
	h.mu.Unlock()
	if first {
		h.log.Error("store: damaged file (`ckptfs verify` lists what it held)", "file", file, "err", detail)
	}
}

// allow reports whether a line of kind key may be logged now, and how many
// lines of that kind were dropped since the last one.
func (h *health) allow(key string) (bool, int) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if t, ok := h.mu.last[key]; ok && now.Sub(t) < logInterval {
		h.mu.suppressed[key]++
		return false, 0
	}
	if len(h.mu.last) > 1000 { // bounded: forget old kinds
		clear(h.mu.last)
		clear(h.mu.suppressed)
	}
	n := h.mu.suppressed[key]
	h.mu.last[key] = now
	delete(h.mu.suppressed, key)
	return true, n
}

// errorLine logs one line of an error, rate-limited by its kind (the
// message without digits, so that file numbers do not make a new kind).
func (h *health) errorLine(msg string, args ...any) {
	key := strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, msg)
	ok, dropped := h.allow(key)
	if !ok {
		return
	}
	if dropped > 0 {
		args = append(args, "repeated", dropped)
	}
	h.log.Error(msg, args...)
}

// backgroundError handles an error of Pebble's background work.
func (h *health) backgroundError(err error) {
	if pebble.IsCorruptionError(err) {
		// Whatever compaction hit it will be picked again at once: pause.
		h.sched.hold()
		if info := pebble.ExtractDataCorruptionInfo(err); info != nil && info.Path != "" {
			h.damaged(info.Path, firstLine(err))
			return
		}
	}
	h.errorLine("store: background error: " + firstLine(err))
}

// backoffScheduler is Pebble's default compaction scheduler (a limit on
// concurrent compactions, granted as they finish and every 100 ms) with one
// addition: hold pauses every compaction for a while, doubling the pause
// each time it is called again soon, up to maxHold.
type backoffScheduler struct {
	db   pebble.DBForCompaction
	stop chan struct{}
	poke chan struct{}
	mu   struct {
		sync.Mutex
		running      int
		unregistered bool
		granting     bool
		grantingCond *sync.Cond
		until        time.Time     // no compaction starts before
		delay        time.Duration // the last hold
	}
}

const (
	minHold = time.Second
	maxHold = 5 * time.Minute
)

func newBackoffScheduler() *backoffScheduler {
	s := &backoffScheduler{stop: make(chan struct{}), poke: make(chan struct{}, 1)}
	s.mu.grantingCond = sync.NewCond(&s.mu.Mutex)
	return s
}

var _ pebble.CompactionScheduler = (*backoffScheduler)(nil)

func (s *backoffScheduler) Register(_ int, db pebble.DBForCompaction) {
	s.db = db
	go s.granter()
}

func (s *backoffScheduler) Unregister() {
	s.stop <- struct{}{}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.mu.unregistered = true
	for s.mu.granting {
		s.mu.grantingCond.Wait()
	}
}

// hold pauses compactions: minHold, or twice the last pause if that one
// ended less than maxHold ago.
func (s *backoffScheduler) hold() {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	switch {
	case now.Before(s.mu.until):
		return // already held
	case s.mu.delay == 0 || now.Sub(s.mu.until) > maxHold:
		s.mu.delay = minHold
	default:
		s.mu.delay = min(2*s.mu.delay, maxHold)
	}
	s.mu.until = now.Add(s.mu.delay)
}

func (s *backoffScheduler) heldLocked() bool { return time.Now().Before(s.mu.until) }

func (s *backoffScheduler) TrySchedule() (bool, pebble.CompactionGrantHandle) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.mu.unregistered || s.heldLocked() {
		return false, nil
	}
	if s.db.GetAllowedWithoutPermission() > s.mu.running {
		s.mu.running++
		return true, s
	}
	return false, nil
}

func (s *backoffScheduler) UpdateGetAllowedWithoutPermission() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

// The scheduler is its own grant handle.
func (s *backoffScheduler) Started()                                          {}
func (s *backoffScheduler) MeasureCPU(pebble.CompactionGoroutineKind)         {}
func (s *backoffScheduler) CumulativeStats(pebble.CompactionGrantHandleStats) {}

func (s *backoffScheduler) Done() {
	s.mu.Lock()
	s.mu.running--
	s.tryGrantLockedAndUnlock()
}

// tryGrantLockedAndUnlock starts waiting compactions up to the limit,
// unless held. It is called with s.mu held and returns with it released.
func (s *backoffScheduler) tryGrantLockedAndUnlock() {
	defer s.mu.Unlock()
	for s.mu.granting {
		s.mu.grantingCond.Wait()
	}
	if s.mu.unregistered || s.heldLocked() {
		return
	}
	toGrant := s.db.GetAllowedWithoutPermission() - s.mu.running
	if toGrant <= 0 {
		return
	}
	s.mu.granting = true
	s.mu.Unlock()
	for ; toGrant > 0; toGrant-- {
		if waiting, _ := s.db.GetWaitingCompaction(); !waiting {
			break
		}
		if !s.db.Schedule(s) {
			break
		}
		s.mu.Lock()
		s.mu.running++
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.mu.granting = false
	s.mu.grantingCond.Broadcast()
}

func (s *backoffScheduler) granter() {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-s.poke:
		case <-s.stop:
			return
		}
		s.mu.Lock()
		s.tryGrantLockedAndUnlock()
	}
}
