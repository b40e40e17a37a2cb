package kvmrec

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
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
	// allocated is the set of frames the RAM file has storage for, as far
	// as the recorder knows (pagemap tracker): a punched hole shows as
	// fewer blocks than this.
	allocated *roaring.Bitmap

	pool    chunkPool
	scratch []byte
	pmBuf   []byte
	lastUse int // chunks the last capture used
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
	case "paused", "postmigrate":
		cfg.Logger.Warn("the VM is paused; recording resumes it after checkpoint 0", "status", status.Status)
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
	r.allocated = roaring.New()
	r.scratch = make([]byte, 64*PageSize)
	return r, nil
}

func (r *recorder) close() {
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

// capture is one checkpoint taken during a pause: the changed frames, in
// increasing pfn order, copied into staging chunks.
type capture struct {
	pfns   []uint64
	chunks [][]byte
	dev    []byte
	stats  CheckpointStats
}

func (c *capture) frame(j int) []byte {
	off := (j % chunkFrames) * PageSize
	return c.chunks[j/chunkFrames][off : off+PageSize]
}

// take pauses the VM and captures checkpoint i. Once `stop` succeeded, the
// VM is always resumed before take returns. A capture is returned whenever
// it is complete, even if resuming failed afterwards.
func (r *recorder) take(ctx context.Context, i int) (c *capture, err error) {
	// The pause must finish even when ctx is canceled (Ctrl-C): the
	// checkpoint in progress completes and the VM runs on.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.cfg.PauseTimeout)
	defer cancel()
	if err := r.reserve(i); err != nil {
		return nil, err
	}
	c = &capture{}
	c.stats.Checkpoint = i
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
		if !complete {
			r.pool.put(c.chunks)
			c = nil
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("resuming the VM after checkpoint %d: %w", i, cerr))
		}
	}()

	var dev *deviceSave
	if r.cfg.DeviceState {
		if dev, err = r.startDeviceSave(pctx); err != nil {
			return c, fmt.Errorf("device state of checkpoint %d: %w", i, err)
		}
		defer dev.abort()
	}
	if err := r.capture(i, c); err != nil {
		return c, fmt.Errorf("checkpoint %d: %w", i, err)
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

// resume sends cont with its own deadline, whatever happened to ctx.
func (r *recorder) resume(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return r.qmp.Execute(cctx, "cont", nil, nil)
}

// reserve prepares staging chunks before the pause so that the copy does
// not fault: all allocated frames for checkpoint 0, else what the last
// checkpoint used plus a quarter.
func (r *recorder) reserve(i int) error {
	need := r.lastUse + r.lastUse/4 + 1
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

// capture does the work of a pause: find the candidate frames, unmap the
// present ones in the VMM (concurrently), hash the candidates and copy the
// changed ones.
func (r *recorder) capture(i int, c *capture) error {
	var cands, present []span
	pageoutDone := make(chan error, 1)
	if r.cfg.Tracker == TrackerPagemap {
		t := time.Now()
		var err error
		if present, err = r.readPagemap(); err != nil {
			return err
		}
		c.stats.Phases.Pagemap = time.Since(t)
		c.stats.Present = spanFrames(present)
		if i > 0 {
			c.stats.WorkingSet = spansBitmap(present)
		}
		go func() {
			t := time.Now()
			err := r.pageout(present)
			c.stats.Phases.Pageout = time.Since(t)
			pageoutDone <- err
		}()
	} else {
		pageoutDone <- nil
	}
	t := time.Now()
	switch {
	case i == 0:
		data, err := dataSpans(r.ram, r.frames)
		if err != nil {
			return err
		}
		cands = data
		r.allocated = spansBitmap(data)
	case r.cfg.Tracker == TrackerHash:
		cands = []span{{0, r.frames}}
	default:
		zeroed, err := r.punched(present)
		if err != nil {
			return err
		}
		cands = unionSpans(present, zeroed)
	}
	serr := r.scan(cands, c)
	c.stats.Phases.Scan = time.Since(t)
	perr := <-pageoutDone
	if serr != nil {
		return serr
	}
	if perr != nil {
		return perr
	}
	r.lastUse = len(c.chunks)
	return nil
}

// readPagemap returns the frames whose page is present in the VMM's page
// table (pagemap bit 63), by segment.
func (r *recorder) readPagemap() ([]span, error) {
	var out []span
	for _, s := range r.m.segs {
		need := int(s.n * 8)
		if cap(r.pmBuf) < need {
			r.pmBuf = make([]byte, need)
		}
		buf := r.pmBuf[:need]
		if _, err := r.pagemap.ReadAt(buf, int64(s.addr/PageSize*8)); err != nil {
			if errors.Is(err, unix.ESRCH) || errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: reading its page table: %v", ErrVMGone, err)
			}
			return nil, fmt.Errorf("reading the VMM's pagemap: %w", err)
		}
		run := int64(-1)
		for k := uint64(0); k < s.n; k++ {
			present := binary.LittleEndian.Uint64(buf[k*8:])>>63 != 0
			switch {
			case present && run < 0:
				run = int64(k)
			case !present && run >= 0:
				out = append(out, span{s.first + uint64(run), s.first + k})
				run = -1
			}
		}
		if run >= 0 {
			out = append(out, span{s.first + uint64(run), s.first + s.n})
		}
	}
	return out, nil
}

// pageoutGap is the largest run of absent frames between two present runs
// that one MADV_PAGEOUT range may cover: walking absent entries is cheaper
// than another range.
const pageoutGap = 32

// pageout unmaps the present frames from the VMM's page table
// (process_madvise MADV_PAGEOUT), so that the next access faults and shows
// up in the pagemap again.
func (r *recorder) pageout(present []span) error {
	var iovs []iovec
	for _, seg := range r.m.segs {
		for _, s := range present {
			if s.end <= seg.first || s.start >= seg.first+seg.n {
				continue
			}
			lo, hi := max(s.start, seg.first), min(s.end, seg.first+seg.n)
			base := seg.addr + (lo-seg.first)*PageSize
			if k := len(iovs) - 1; k >= 0 && base >= iovs[k].base+iovs[k].len &&
				base-(iovs[k].base+iovs[k].len) <= pageoutGap*PageSize {
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

// punched returns the frames that became holes since the last checkpoint
// (a VMM can punch guest RAM: balloon, discard) and held non-zero content:
// their content is now zero. It walks the file's holes only when the file
// has fewer blocks than the recorder knows to be allocated, as a walk costs
// milliseconds on large files.
func (r *recorder) punched(present []span) ([]span, error) {
	for _, s := range present {
		r.allocated.AddRange(s.start, s.end)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(r.ram.Fd()), &st); err != nil {
		return nil, fmt.Errorf("stat of the RAM file: %w", err)
	}
	if uint64(st.Blocks)*512/PageSize == r.allocated.GetCardinality() {
		return nil, nil
	}
	data, err := dataSpans(r.ram, r.frames)
	if err != nil {
		return nil, err
	}
	r.allocated = spansBitmap(data)
	var out []span
	for _, h := range complementSpans(data, r.frames) {
		for p := h.start; p < h.end; p++ {
			if r.hashes[p] == zeroHash {
				continue
			}
			if k := len(out) - 1; k >= 0 && out[k].end == p {
				out[k].end++
			} else {
				out = append(out, span{p, p + 1})
			}
		}
	}
	return out, nil
}

// scan reads the candidate frames with pread, hashes them and copies those
// whose hash differs from the last checkpoint into staging chunks.
func (r *recorder) scan(cands []span, c *capture) error {
	batch := uint64(len(r.scratch) / PageSize)
	for _, s := range cands {
		for p := s.start; p < s.end; {
			n := min(batch, s.end-p)
			buf := r.scratch[:n*PageSize]
			if _, err := r.ram.ReadAt(buf, int64(p*PageSize)); err != nil {
				return fmt.Errorf("reading guest RAM at frame %d: %w", p, err)
			}
			for k := uint64(0); k < n; k++ {
				f := buf[k*PageSize : (k+1)*PageSize]
				h := xxh3.Hash128(f)
				if h == r.hashes[p+k] {
					continue
				}
				j := len(c.pfns)
				if j/chunkFrames >= len(c.chunks) {
					ch, err := r.pool.get()
					if err != nil {
						return err
					}
					c.chunks = append(c.chunks, ch)
				}
				copy(c.frame(j), f)
				c.pfns = append(c.pfns, p+k)
				r.hashes[p+k] = h
			}
			p += n
		}
		c.stats.Scanned += s.n()
	}
	c.stats.Copied = uint64(len(c.pfns))
	return nil
}
