package fs

import (
	"os"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
	"sync"

	"github.com/ckptfs/ckptfs/index"
)

// TuneGC sets the garbage collector of a process that serves a mount whose
// store has a block cache of cacheBytes (see doc.go, "Memory"). It collects
// only when the heap has grown by a headroom of half the cache plus
// 256 MiB over the largest live heap seen so far, and never lowers that
// limit, so that the memory the process touched stays mapped and is reused
// instead of being returned to the kernel and faulted in again. An explicit
// GOGC or GOMEMLIMIT wins. cacheBytes 0 means index.DefaultCacheSize.
func TuneGC(cacheBytes int64) {
	if os.Getenv("GOGC") != "" || os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	if cacheBytes <= 0 {
		cacheBytes = index.DefaultCacheSize
	}
	gcTune.Lock()
	defer gcTune.Unlock()
	gcTune.headroom = cacheBytes/2 + 256<<20
	gcTune.limit = max(gcTune.limit, cacheBytes+gcTune.headroom)
	debug.SetGCPercent(-1)
	retune()
	if !gcTune.armed {
		gcTune.armed = true
		armGCHook()
	}
}

var gcTune struct {
	sync.Mutex
	headroom, limit int64
	armed           bool
}

var liveSample = []rtmetrics.Sample{{Name: "/gc/heap/live:bytes"}}

// retune raises the memory limit to the live heap plus the headroom when
// that is more: a limit near the live heap would make the collector run
// back to back. It never lowers it: below the limit the runtime keeps what
// it has mapped. Called with gcTune held.
func retune() {
	rtmetrics.Read(liveSample)
	if v := liveSample[0].Value; v.Kind() == rtmetrics.KindUint64 {
		gcTune.limit = max(gcTune.limit, int64(v.Uint64())+gcTune.headroom)
	}
	debug.SetMemoryLimit(gcTune.limit)
}

// gcSentinel holds a pointer so that it is never placed in the tiny
// allocator, whose blocks may outlive it and delay its finalizer.
type gcSentinel struct{ _ *gcSentinel }

// armGCHook runs retune after every collection: a finalizer on an
// unreachable object runs once per cycle and re-arms itself.
func armGCHook() {
	runtime.SetFinalizer(new(gcSentinel), func(*gcSentinel) {
		gcTune.Lock()
		retune()
		gcTune.Unlock()
		armGCHook()
	})
}
