package kvmrec

import (
	"context"
	"fmt"
	"os"
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

var zeroHash = xxh3.Hash128(make([]byte, pageSize))

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
	r.frames = r.m.size / pageSize
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
	r.scratch = make([]byte, 64*pageSize)
	return r, nil
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
