package kvmrec

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"sync/atomic"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// recorder is one attached VMM.
type recorder struct {
	cfg        Config
	qmp        *qmp.Client
	pid        int
	vmmVersion string
	m          ramMapping
	frames     uint64
	ram        *os.File // the RAM file, read with pread (never mapped: see doc.go)
	pidfd      int      // pagemap tracker: for process_madvise
	pagemap    *os.File // pagemap tracker: /proc/PID/pagemap
	metrics    *metrics

	// hashes is the content hash of every frame at the last checkpoint
	// taken. Only the pause code touches it.
	hashes []xxh3.Uint128

	// late are the frames of the last checkpoint that were present and
	// changed: they are unmapped after cont (see doc.go, "Deferred
	// unmapping") and count as touched in the interval that follows.
	late     []span
	lateDone chan lateResult // the unmapping of late in progress, or nil

	// blocksBefore is the RAM file's size in blocks at the last check
	// for punched holes, before the last pause.
	blocksBefore int64

	pool     chunkPool
	scratch  []byte
	scratch2 []byte // for the second scan goroutine
	pmBuf    []byte
	lastUse  int // chunks the last capture used

	det *detState // a deterministic recording's additions, or nil
}

var zeroHash = xxh3.Hash128(make([]byte, PageSize))

// attach connects to the VMM and checks everything Record refuses on.
func attach(ctx context.Context, cfg Config) (_ *recorder, err error) {
	r := &recorder{cfg: cfg, pidfd: -1}
	defer func() {
		if err != nil {
			r.close()
		}
	}()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if r.qmp, err = qmp.Dial(dctx, cfg.QMPSocket); err != nil {
		return nil, err
	}
	g := r.qmp.Greeting()
	r.vmmVersion = fmt.Sprintf("QEMU %d.%d.%d %s", g.Version.QEMU.Major, g.Version.QEMU.Minor, g.Version.QEMU.Micro, g.Version.Package)
	if r.pid, err = r.qmp.PeerPID(); err != nil {
		return nil, err
	}
	if r.m, err = findMapping(r.pid, cfg.MemPath); err != nil {
		return nil, err
	}
	r.frames = r.m.size / PageSize
	if r.ram, err = os.Open(cfg.MemPath); err != nil {
		return nil, fmt.Errorf("opening the RAM file: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(r.ram.Fd()), &st); err != nil || st.Ino != r.m.ino || uint64(st.Dev) != r.m.dev {
		return nil, fmt.Errorf("%w: %s changed while attaching", ErrNotMapped, cfg.MemPath)
	}
	if cfg.Tracker == TrackerPagemap {
		hazards := reclaimHazards()
		if h := memFileHazard(r.ram); h != "" {
			hazards = append(hazards, h)
		}
		for _, h := range hazards {
			cfg.Logger.Warn("the pagemap tracker may miss accesses: "+h+"; use the hash tracker for exact dirty sets", "hazard", h)
		}
		if r.pidfd, err = unix.PidfdOpen(r.pid, 0); err != nil {
			return nil, fmt.Errorf("pidfd of the VMM (pid %d): %w", r.pid, err)
		}
		if r.pagemap, err = os.Open(fmt.Sprintf("/proc/%d/pagemap", r.pid)); err != nil {
			return nil, fmt.Errorf("the pagemap tracker needs the VMM's page table: %w", err)
		}
	}
	status, err := r.qmp.QueryStatus(dctx)
	if err != nil {
		return nil, err
	}
	switch status.Status {
	case "running":
	case "paused":
		// A recorder killed during a pause leaves the VM stopped; say
		// so rather than resume it without a word.
		cfg.Logger.Warn("the VM was found paused (probably by a recorder that died during a pause, or a user's stop); "+
			"recording resumes it after checkpoint 0", "status", status.Status)
	case "postmigrate":
		cfg.Logger.Warn("the VM was found paused after a migration; recording resumes it after checkpoint 0", "status", status.Status)
	default:
		return nil, fmt.Errorf("%w: the VM is in state %q; record needs a running (or paused) VM", ErrBadConfig, status.Status)
	}
	if cfg.DeviceState {
		caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
		if err := r.qmp.Execute(dctx, "migrate-set-capabilities", caps, nil); err != nil {
			return nil, fmt.Errorf("device state needs migration capability x-ignore-shared: %w", err)
		}
		// The stream without RAM is small; do not let the default
		// bandwidth limit stretch the pause. Older VMMs may lack it.
		_ = r.qmp.Execute(dctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}, nil)
	}
	r.hashes = make([]xxh3.Uint128, r.frames)
	for i := range r.hashes {
		r.hashes[i] = zeroHash
	}
	r.scratch = make([]byte, 64*PageSize)
	return r, nil
}

type lateResult struct {
	took time.Duration
	err  error
}

// startLate unmaps the late frames in the background, with the VM running.
func (r *recorder) startLate() {
	if len(r.late) == 0 {
		return
	}
	late := r.late
	r.lateDone = make(chan lateResult, 1)
	go func() {
		t := time.Now()
		err := r.pageout(late, 0)
		r.lateDone <- lateResult{time.Since(t), err}
	}()
}

// waitLate waits for the background unmapping: it must be complete before
// the next pagemap read, or it could hide accesses of the next interval.
func (r *recorder) waitLate() (lateResult, error) {
	if r.lateDone == nil {
		return lateResult{}, nil
	}
	res := <-r.lateDone
	r.lateDone = nil
	if res.err != nil {
		return res, fmt.Errorf("unmapping the frames changed in the last interval: %w", res.err)
	}
	return res, nil
}

func (r *recorder) close() {
	_, _ = r.waitLate()
	if r.qmp != nil {
		r.qmp.Close()
	}
	if r.ram != nil {
		r.ram.Close()
	}
	if r.pagemap != nil {
		r.pagemap.Close()
	}
	if r.pidfd >= 0 {
		unix.Close(r.pidfd)
	}
	r.pool.close()
}

// staging holds copied frames: frame j of pfns[j] is in chunks.
type staging struct {
	pfns   []uint64
	chunks [][]byte

	// A pre-copy staging (see precopy) holds the hash of each frame in
	// hashes, as the frame may change again before the stop; frames the
	// pause scans again are dropped.
	pre    bool
	hashes []xxh3.Uint128
	drop   []bool
}

func (st *staging) dropped(j int) bool { return st.drop != nil && st.drop[j] }

func (st *staging) frame(j int) []byte {
	off := (j % chunkFrames) * PageSize
	return st.chunks[j/chunkFrames][off : off+PageSize]
}

// add copies frame f of pfn.
func (st *staging) add(pool *chunkPool, pfn uint64, f []byte) error {
	j := len(st.pfns)
	if j/chunkFrames >= len(st.chunks) {
		ch, err := pool.get()
		if err != nil {
			return err
		}
		st.chunks = append(st.chunks, ch)
	}
	copy(st.frame(j), f)
	st.pfns = append(st.pfns, pfn)
	return nil
}

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

// take pauses the VM and captures checkpoint i. Once `stop` succeeded, the
// VM is always resumed before take returns. A capture is returned whenever
// it is complete, even if resuming failed afterwards.
func (r *recorder) take(ctx context.Context, i int) (c *capture, err error) {
	// The pause must finish even when ctx is canceled (Ctrl-C): the
	// checkpoint in progress completes and the VM runs on.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PauseTimeout)
	defer cancel()
	late, err := r.waitLate()
	if err != nil {
		return nil, err
	}
	if err := r.reserve(i); err != nil {
		return nil, err
	}
	var zeroed []span
	if i > 0 && r.cfg.Tracker == TrackerPagemap {
		if zeroed, err = r.punched(i); err != nil {
			return nil, err
		}
	}
	if i == 0 && r.cfg.Tracker == TrackerPagemap {
		if r.blocksBefore, err = r.fileBlocks(); err != nil {
			return nil, err
		}
		// Nothing has been recorded yet, so the VMM's page table can be
		// emptied while the VM runs: the pause then unmaps only what
		// was touched since.
		if err := r.prepass(); err != nil {
			return nil, err
		}
	}
	c = &capture{}
	c.stats.Checkpoint = i
	c.stats.DeferredUnmap = late.took
	if r.cfg.Tracker == TrackerPagemap && !r.cfg.NoPrecopy {
		if err := r.precopy(c, i); err != nil {
			r.pool.put(c.chunks())
			return nil, fmt.Errorf("checkpoint %d: %w", i, err)
		}
	}
	// Events of earlier pauses must not be taken for this one's.
	r.qmp.DiscardEvents("STOP")
	r.qmp.DiscardEvents("RESUME")
	t0 := time.Now()
	if err := r.qmp.Execute(pctx, "stop", nil, nil); err != nil {
		var qe *qmp.Error
		if !errors.As(err, &qe) && !errors.Is(err, qmp.ErrClosed) {
			r.resume(ctx) // no answer: the VM may be stopped
		}
		return nil, fmt.Errorf("stopping the VM for checkpoint %d: %w", i, err)
	}
	c.stats.Phases.Stop = time.Since(t0)
	complete := false
	defer func() {
		tc := time.Now()
		cerr := r.resume(ctx)
		c.stats.Phases.Cont = time.Since(tc)
		c.stats.Downtime = time.Since(t0)
		if cerr == nil {
			c.stats.VMDowntime = r.vmDowntime(ctx)
		}
		if !complete {
			r.pool.put(c.chunks())
			c = nil
		} else if cerr == nil {
			r.startLate()
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("resuming the VM after checkpoint %d: %w", i, cerr))
		}
	}()

	if r.det != nil {
		if c.stats.BoundaryRetries, err = r.settleBoundary(pctx, i); err != nil {
			return c, err
		}
		if c.icount, err = r.queryICount(pctx); err != nil {
			return c, fmt.Errorf("checkpoint %d: %w", i, err)
		}
		if c.dev, err = r.saveReplayDeviceState(pctx, r.det.dir, i); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		c.exec = r.det.exec.take()
		tables, err := r.pageTableSpans(pctx)
		if err != nil {
			return c, fmt.Errorf("checkpoint %d: %w", i, err)
		}
		r.cfg.Logger.Debug("translation cache", "checkpoint", i, "blocks_translated", r.det.exec.translated(),
			"flushes", r.det.exec.flushed(), "frames_executed", spanFrames(c.exec), "page_tables", spanFrames(tables))
		c.exec = unionSpans(c.exec, tables)
		if err := r.requestTranslationFlush(pctx); err != nil {
			return c, fmt.Errorf("checkpoint %d: %w", i, err)
		}
	}
	var dev *deviceSave
	if r.cfg.DeviceState {
		if dev, err = r.startDeviceSave(pctx); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		defer dev.abort()
	}
	if err := r.capture(i, c, zeroed); err != nil {
		return c, fmt.Errorf("checkpoint %d: %w", i, err)
	}
	if c.hasWS {
		c.ws = unionSpans(c.ws, c.exec)
	}
	if dev != nil {
		td := time.Now()
		if c.dev, err = dev.wait(pctx); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		c.stats.Phases.Device = time.Since(td)
	}
	complete = true
	return c, nil
}

// vmDowntime is the time between the VMM's STOP and RESUME events of the
// pause that just ended, or 0. A VMM sends each event before its reply to
// stop and cont, so both are queued by now; the wait is only a bound.
func (r *recorder) vmDowntime(ctx context.Context) time.Duration {
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Millisecond)
	defer cancel()
	stop, err := r.qmp.WaitEvent(wctx, "STOP")
	if err != nil {
		return 0
	}
	resume, err := r.qmp.WaitEvent(wctx, "RESUME")
	if err != nil || stop.Time.IsZero() || !resume.Time.After(stop.Time) {
		return 0
	}
	return resume.Time.Sub(stop.Time)
}

// resume sends cont with its own deadline, whatever happened to ctx.
func (r *recorder) resume(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return r.qmp.Execute(cctx, "cont", nil, nil)
}

// reserve prepares staging chunks before the pause so that the copy does
// not fault: all allocated frames for checkpoint 0, else what the last
// checkpoint used plus a quarter. Checkpoint 0 holds the whole RAM and says
// little about an interval, so checkpoint 1 starts from a quarter of it;
// chunks it needs beyond that are mapped when it copies (mostly in the
// pre-copy, with the VM running). Reserving checkpoint 0's size again cost
// a 1 GiB guest about 1 GiB of freshly populated memory, seconds of CPU
// taken from the store while it wrote checkpoint 0.
func (r *recorder) reserve(i int) error {
	need := r.lastUse + r.lastUse/4 + 1
	if i == 1 {
		need = r.lastUse/4 + 1
	}
	if i == 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(r.ram.Fd()), &st); err != nil {
			return fmt.Errorf("stat of the RAM file: %w", err)
		}
		frames := min(uint64(st.Blocks)*512/PageSize, r.frames)
		need = int(frames/chunkFrames) + 1
		return r.pool.reserve(need, 0)
	}
	// Keep enough for the capture being stored and the next one.
	return r.pool.reserve(need, 3*need)
}

// capture does the work of a pause: find the candidate frames, hash them
// and copy the changed ones, and unmap present frames in the VMM. In exact
// mode and for checkpoint 0 all present frames are unmapped, concurrently
// with the scan. Else the scan hands the present frames that did not change
// to a concurrent pageout as it goes, and keeps the changed ones for
// startLate. After a pre-copy the candidates are only what the VM touched
// since it, and settlePrecopy reconciles the two copies.
func (r *recorder) capture(i int, c *capture, zeroed []span) error {
	var cands, present []span
	pageoutDone := make(chan error, 1)
	var cls *classifier
	if r.cfg.Tracker == TrackerPagemap {
		t := time.Now()
		var err error
		if present, err = r.readPagemap(); err != nil {
			return err
		}
		c.stats.Phases.Pagemap = time.Since(t)
		c.stats.Present = spanFrames(present)
		if i > 0 {
			// The bitmap is built by the store goroutine, after the pause.
			cands = unionSpans(present, r.late)
			c.ws = unionSpans(cands, c.preWS)
			c.hasWS = true
		}
		if i == 0 || r.cfg.ExactWorkingSets {
			go func() {
				t := time.Now()
				err := r.pageout(present, pageoutGap)
				c.stats.Phases.Pageout = time.Since(t)
				pageoutDone <- err
			}()
		} else {
			cls = r.newClassifier(present)
			go func() {
				t := time.Now()
				var first error
				for spans := range cls.out {
					// Once the scan is done, what is left is not worth
					// a longer pause: it is unmapped after cont.
					if cls.cutoff.Load() {
						cls.leftover = append(cls.leftover, spans...)
						continue
					}
					if err := r.pageout(spans, 0); err != nil && first == nil {
						first = err
					}
				}
				c.stats.Phases.Pageout = time.Since(t)
				pageoutDone <- first
			}()
		}
	} else {
		pageoutDone <- nil
	}
	t := time.Now()
	var serr error
	switch {
	case i == 0 && c.precopiedAll:
		// What the VM wrote since the pre-copy read everything.
		cands = present
	case i == 0:
		cands, serr = dataSpans(r.ram, r.frames)
	case r.cfg.Tracker == TrackerHash:
		cands = []span{{0, r.frames}}
	default:
		cands = unionSpans(cands, zeroed)
	}
	if serr == nil {
		var parts []*staging
		parts, serr = r.scanAll(cands, cls, false)
		c.parts = append(c.parts, parts...)
		c.stats.Scanned = spanFrames(cands)
		c.stats.Copied = uint64(framesIn(parts))
	}
	if cls != nil {
		cls.cutoff.Store(true)
		cls.finish()
	}
	c.stats.Phases.Scan = time.Since(t)
	perr := <-pageoutDone
	if serr != nil {
		return serr
	}
	if perr != nil {
		return perr
	}
	r.late = nil
	c.settlePrecopy(cands, r.hashes)
	if cls != nil {
		r.late = unionSpans(cls.late, cls.presentIn(cls.leftover))
		c.stats.Deferred = spanFrames(r.late)
	}
	r.lastUse = len(c.chunks())
	return nil
}

// classifier sorts the present frames, as the scan meets them in
// increasing order, into ranges to unmap during the pause and frames to
// unmap after it (late). A range holds unchanged present frames and the
// absent frames between them (free to walk); a changed frame ends it, as
// unmapping a written page costs a TLB flush of its own. Each range costs a
// flush too, so a range of fewer than minRun present frames is not worth
// it: its frames go late, with the changed ones.
type classifier struct {
	present *bitset
	minRun  uint64
	run     span   // the current range
	runN    uint64 // present frames in it
	runSub  []span // and where they are
	clean   []span
	late    []span
	out     chan []span

	cutoff   atomic.Bool // the scan is done: stop unmapping in the pause
	leftover []span      // ranges not unmapped in the pause (pageout goroutine's)
}

// presentIn returns the present frames of ranges (sorted, disjoint).
func (k *classifier) presentIn(ranges []span) []span {
	slices.SortFunc(ranges, func(a, b span) int { return cmp.Compare(a.start, b.start) })
	var out []span
	for _, s := range ranges {
		for p := s.start; p < s.end; p++ {
			if k.present.w[p/64]&(1<<(p%64)) != 0 {
				out = appendSpan(out, span{p, p + 1})
			}
		}
	}
	return out
}

// minCleanRun is the fewest unchanged present frames a range unmapped during
// the pause must hold.
var minCleanRun uint64 = 16

func (r *recorder) newClassifier(present []span) *classifier {
	ps := newBitset(r.frames)
	ps.addSpans(present)
	return &classifier{present: ps, minRun: minCleanRun, out: make(chan []span, 64)}
}

func appendSpan(out []span, s span) []span {
	if k := len(out) - 1; k >= 0 && out[k].end == s.start {
		out[k].end = s.end
		return out
	}
	return append(out, s)
}

func (k *classifier) closeRun() {
	if k.runN == 0 {
		return
	}
	if k.runN >= k.minRun {
		k.clean = append(k.clean, k.run)
	} else {
		for _, s := range k.runSub {
			k.late = appendSpan(k.late, s)
		}
	}
	k.run, k.runN, k.runSub = span{}, 0, k.runSub[:0]
}

// add classifies frame p if it is present.
func (k *classifier) add(p uint64, changed bool) {
	if k.present.w[p/64]&(1<<(p%64)) == 0 {
		return
	}
	if changed {
		k.closeRun()
		k.late = appendSpan(k.late, span{p, p + 1})
		return
	}
	if k.runN == 0 {
		k.run.start = p
	}
	k.run.end = p + 1
	k.runN++
	k.runSub = appendSpan(k.runSub, span{p, p + 1})
}

// batchDone hands the ranges found so far to the pageout goroutine once
// there are enough of them.
func (k *classifier) batchDone() {
	if len(k.clean) >= 8 {
		k.out <- k.clean
		k.clean = nil
	}
}

// join takes over the results of k2, which classified the frames after
// k's.
func (k *classifier) join(k2 *classifier) {
	k2.closeRun()
	if len(k2.clean) > 0 {
		k.out <- k2.clean
	}
	k.closeRun()
	for _, s := range k2.late {
		k.late = appendSpan(k.late, s)
	}
}

func (k *classifier) finish() {
	k.closeRun()
	if len(k.clean) > 0 {
		k.out <- k.clean
		k.clean = nil
	}
	close(k.out)
}

// prepass unmaps every present frame of the VMM while the VM runs (before
// checkpoint 0 only).
func (r *recorder) prepass() error {
	present, err := r.readPagemap()
	if err != nil {
		return err
	}
	return r.pageout(present, pageoutGap)
}

// readPagemap returns the frames whose page is present in the VMM's page
// table (pagemap bit 63).
func (r *recorder) readPagemap() ([]span, error) {
	return presentFrames(r.pagemap, r.m, &r.pmBuf)
}

// presentFrames reads which frames of mapping m are present in the page
// table that pagemap (/proc/PID/pagemap) shows; buf is reused.
func presentFrames(pagemap *os.File, m ramMapping, buf *[]byte) ([]span, error) {
	var present []span
	for _, s := range m.segs {
		need := int(s.n * 8)
		if cap(*buf) < need {
			*buf = make([]byte, need)
		}
		b := (*buf)[:need]
		if _, err := pagemap.ReadAt(b, int64(s.addr/PageSize*8)); err != nil {
			if errors.Is(err, unix.ESRCH) || errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: reading its page table: %v", ErrVMGone, err)
			}
			return nil, fmt.Errorf("reading the VMM's pagemap: %w", err)
		}
		for k := uint64(0); k < s.n; k++ {
			if binary.LittleEndian.Uint64(b[k*8:])>>63 != 0 {
				present = appendSpan(present, span{s.first + k, s.first + k + 1})
			}
		}
	}
	return present, nil
}

// pageoutGap is the largest run of absent frames between two present runs
// that one MADV_PAGEOUT range may cover: walking absent entries is cheaper
// than another range.
const pageoutGap = 32

// pageout unmaps the present frames from the VMM's page table
// (process_madvise MADV_PAGEOUT), so that the next access faults and shows
// up in the pagemap again.
//
// Ranges are merged across gaps of up to maxGap frames, which must then hold
// nothing that should stay mapped.
func (r *recorder) pageout(present []span, maxGap uint64) error {
	var iovs []iovec
	for _, seg := range r.m.segs {
		for _, s := range present {
			if s.end <= seg.first || s.start >= seg.first+seg.n {
				continue
			}
			lo, hi := max(s.start, seg.first), min(s.end, seg.first+seg.n)
			base := seg.addr + (lo-seg.first)*PageSize
			if k := len(iovs) - 1; k >= 0 && base >= iovs[k].base+iovs[k].len &&
				base-(iovs[k].base+iovs[k].len) <= maxGap*PageSize {
				iovs[k].len = base + (hi-lo)*PageSize - iovs[k].base
				continue
			}
			iovs = append(iovs, iovec{base: base, len: (hi - lo) * PageSize})
		}
	}
	const maxIov = 1024 // UIO_MAXIOV
	for len(iovs) > 0 {
		batch := iovs[:min(len(iovs), maxIov)]
		var total uint64
		for _, v := range batch {
			total += v.len
		}
		n, err := processMadvise(r.pidfd, batch, unix.MADV_PAGEOUT)
		switch {
		case errors.Is(err, unix.EINTR) || errors.Is(err, unix.EAGAIN):
			continue
		case errors.Is(err, unix.ESRCH):
			return fmt.Errorf("%w: unmapping its pages: %v", ErrVMGone, err)
		case errors.Is(err, unix.EPERM):
			return fmt.Errorf("process_madvise on the VMM (pid %d) is not permitted: the pagemap tracker needs CAP_SYS_NICE and ptrace access (run as root), or use the hash tracker: %w", r.pid, err)
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("MADV_PAGEOUT does not work on the RAM mapping (hugetlbfs or locked memory?); use the hash tracker: %w", err)
		case err != nil:
			return fmt.Errorf("process_madvise(MADV_PAGEOUT): %w", err)
		}
		if n >= total {
			iovs = iovs[len(batch):]
			continue
		}
		// The kernel stopped early: go on after what it did.
		for n > 0 {
			if n >= iovs[0].len {
				n -= iovs[0].len
				iovs = iovs[1:]
				continue
			}
			iovs[0].base += n
			iovs[0].len -= n
			n = 0
		}
	}
	return nil
}

// punched returns the frames that are holes in the RAM file but held
// non-zero content at the last checkpoint. A VMM can punch guest RAM
// (virtio-balloon, discard), which zeroes those frames and unmaps them, so
// the pagemap does not show them.
//
// Walking the holes of a large file costs milliseconds to a hundred
// milliseconds, so punched runs before the pause (a frame punched between
// the walk and the stop is zero from the next checkpoint on), and walks
// only when the file has fewer blocks than at its last check, or every
// holeWalkEvery checkpoints (a punch hidden by allocations in the same
// interval). Unmapping can free clean, never-written pages (zeros, which
// need no record), so the file also shrinks without punches; that only
// costs a walk. Punched frames are frames the guest gave away, whose content
// it does not rely on.
func (r *recorder) punched(i int) ([]span, error) {
	blocks, err := r.fileBlocks()
	if err != nil {
		return nil, err
	}
	shrank := blocks < r.blocksBefore
	r.blocksBefore = blocks
	if !shrank && i%holeWalkEvery != 0 {
		return nil, nil
	}
	data, err := dataSpans(r.ram, r.frames)
	if err != nil {
		return nil, err
	}
	var out []span
	for _, h := range complementSpans(data, r.frames) {
		for p := h.start; p < h.end; p++ {
			if r.hashes[p] != zeroHash {
				out = appendSpan(out, span{p, p + 1})
			}
		}
	}
	return out, nil
}

// holeWalkEvery bounds how many checkpoints a punched hole can go unseen.
const holeWalkEvery = 16

func (r *recorder) fileBlocks() (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(r.ram.Fd()), &st); err != nil {
		return 0, fmt.Errorf("stat of the RAM file: %w", err)
	}
	return st.Blocks, nil
}

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

func framesIn(parts []*staging) int {
	n := 0
	for _, p := range parts {
		n += len(p.pfns)
	}
	return n
}

// scanAll scans the candidates, in two halves on two goroutines when there
// are enough of them and two CPUs: reading and hashing run at memory speed,
// so a second CPU nearly halves the pause. With pre, the parts keep the new
// hashes instead of updating r.hashes (see precopy).
func (r *recorder) scanAll(cands []span, cls *classifier, pre bool) ([]*staging, error) {
	total := spanFrames(cands)
	if total < 4096 || runtime.GOMAXPROCS(0) < 2 || !parallelScan {
		st := &staging{pre: pre}
		err := r.scan(cands, st, cls, r.scratch)
		return []*staging{st}, err
	}
	lo, hi := splitSpans(cands, total/2)
	a, b := &staging{pre: pre}, &staging{pre: pre}
	parts := []*staging{a, b}
	var cls2 *classifier
	if cls != nil {
		cls2 = &classifier{present: cls.present, minRun: cls.minRun, out: cls.out}
	}
	if r.scratch2 == nil {
		r.scratch2 = make([]byte, len(r.scratch))
	}
	errb := make(chan error, 1)
	go func() { errb <- r.scan(hi, b, cls2, r.scratch2) }()
	erra := r.scan(lo, a, cls, r.scratch)
	if err := errors.Join(erra, <-errb); err != nil {
		return parts, err
	}
	if cls != nil {
		cls.join(cls2)
	}
	return parts, nil
}

// parallelScan enables scanAll's second goroutine.
var parallelScan = true

// splitSpans splits sorted spans after n frames.
func splitSpans(spans []span, n uint64) (lo, hi []span) {
	for i, s := range spans {
		if s.n() < n {
			n -= s.n()
			continue
		}
		lo = append(append([]span{}, spans[:i]...), span{s.start, s.start + n})
		if s.start+n < s.end {
			hi = append(hi, span{s.start + n, s.end})
		}
		return lo, append(hi, spans[i+1:]...)
	}
	return spans, nil
}

// readGap is the most non-candidate frames between two candidate runs that
// scan reads through rather than issuing another pread: a system call costs
// about as much as copying 5 frames here (2.5 µs vs 0.45 µs a frame on this
// machine's PVM guest), and the candidates come in short runs (fault-around
// blocks and the single frames written in the interval before).
const readGap = 4

// scan reads the candidate frames with pread, hashes them and copies those
// whose hash differs from the last checkpoint into st.
func (r *recorder) scan(cands []span, st *staging, cls *classifier, scratch []byte) error {
	batch := uint64(len(scratch) / PageSize)
	from := uint64(0) // where cands[i] continues (a long run is split)
	for i := 0; i < len(cands); {
		// One pread covers cands[i:j], with their gaps, up to batch
		// frames.
		lo := max(cands[i].start, from)
		hi := min(cands[i].end, lo+batch)
		j := i + 1
		if hi == cands[i].end {
			for j < len(cands) && cands[j].start-hi <= readGap && cands[j].end-lo <= batch {
				hi = cands[j].end
				j++
			}
		}
		buf := scratch[:(hi-lo)*PageSize]
		if _, err := r.ram.ReadAt(buf, int64(lo*PageSize)); err != nil {
			return fmt.Errorf("reading guest RAM at frame %d: %w", lo, err)
		}
		for k := i; k < j; k++ {
			s := cands[k]
			for p := max(s.start, lo); p < min(s.end, hi); p++ {
				f := buf[(p-lo)*PageSize : (p-lo+1)*PageSize]
				h := xxh3.Hash128(f)
				changed := h != r.hashes[p]
				if cls != nil {
					cls.add(p, changed)
				}
				if !changed {
					continue
				}
				if err := st.add(&r.pool, p, f); err != nil {
					return err
				}
				if st.pre {
					st.hashes = append(st.hashes, h)
				} else {
					r.hashes[p] = h
				}
			}
		}
		if cls != nil {
			cls.batchDone()
		}
		if hi < cands[i].end { // the rest of a long run
			from = hi
			continue
		}
		i = j
	}
	return nil
}
