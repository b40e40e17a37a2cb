package fs

import (
	"os"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

// TestTuneGC: no proportional collection, a limit of at least the cache
// plus headroom, raised above a live heap that outgrows it, never lowered.
func TestTuneGC(t *testing.T) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		t.Fatal("TestTuneGC needs GOGC and GOMEMLIMIT unset: TuneGC leaves an explicit setting alone")
	}
	const cache = 64 << 20
	TuneGC(cache) // TestMain tuned for 512 MiB already: the limit only rises
	defer TuneGC(0)
	if old := debug.SetGCPercent(-1); old != -1 {
		t.Errorf("GOGC is %d, want off", old)
	}
	limit := func() int64 { return debug.SetMemoryLimit(-1) }
	base := limit()
	if base < cache+cache/2+256<<20 {
		t.Fatalf("limit %d below cache plus headroom", base)
	}
	// A live heap above the limit (never touched, so it costs no memory).
	live := make([]byte, base+(256<<20))
	runtime.GC()
	deadline := time.Now().Add(5 * time.Second)
	for limit() < int64(len(live)) && time.Now().Before(deadline) {
		runtime.GC()
		time.Sleep(10 * time.Millisecond)
	}
	raised := limit()
	if raised < int64(len(live))+cache/2 {
		t.Fatalf("limit %d after a live heap of %d, want it above live plus headroom", raised, len(live))
	}
	runtime.KeepAlive(live)
	live = nil
	runtime.GC()
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
	if l := limit(); l < raised {
		t.Errorf("limit fell from %d to %d when the heap shrank", raised, l)
	}
}
