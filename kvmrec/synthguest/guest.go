// Package synthguest is a synthetic guest for testing and benchmarking the
// recorder without a real VM: a process that maps a file MAP_SHARED as its
// "RAM", answers the QMP commands the recorder uses on a unix socket, and
// runs a deterministic workload that reads and writes a configurable
// fraction of its frames in every interval.
//
// # Intervals and truth
//
// The guest counts pauses: the n-th `stop` (n = 0, 1, ...) is pause n, and
// interval n is the execution between pause n and pause n+1 (the recorder's
// checkpoint n and interval n when it is the only client that stops the
// guest). With a TruthDir, the guest writes at pause n, before it answers
// `stop`:
//
//	pause-<n>.hashes  xxh3-64 of every frame at pause n (little-endian uint64s)
//	<n-1>.accessed    the frames interval n-1 read or wrote (list format)
//	<n-1>.changed     the frames whose content interval n-1 changed
//
// Every write changes the frame's content (it XORs a non-zero word into it,
// or clears a non-zero frame), so "changed" is exactly "written".
//
// The guest reads its RAM for the hashes with pread on the file, never
// through its mapping, so that computing the truth adds no page-table
// entries the recorder would count as accesses.
//
// # Workload
//
// After each `cont` the guest draws the interval's plan from (Seed,
// interval): WSFraction of all frames, in runs of 1 + Locality*63 adjacent
// frames at random places, of which DirtyFraction of all frames are written
// and the rest read. It runs the plan at once (TickInterval 0) or
// TickFrames operations per TickInterval, and then idles until the next
// `stop`. A `stop` interrupts the plan between two operations; the rest of
// it is dropped.
//
// # Fault-around
//
// Unless Config.FaultAround is set, the guest registers its RAM mapping
// with userfaultfd in write-protect mode and protects nothing: the kernel
// then maps exactly the page a read faults on instead of up to 16
// neighbours, so a pagemap tracker sees the frames the guest touched and no
// more (faultaround.go). A kernel without write-protect for shared memory
// (before 5.19) leaves fault-around on, with a warning.
package synthguest

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// pageSize is the frame size.
const pageSize = index.PageSize

// Config describes a synthetic guest.
type Config struct {
	MemPath   string // RAM backing file; created or truncated to RAMSize
	RAMSize   uint64 // bytes, a multiple of pageSize
	QMPSocket string // unix socket path the guest listens on

	WSFraction    float64 // fraction of all frames accessed per interval
	DirtyFraction float64 // fraction of all frames written per interval (at most WSFraction)
	Locality      float64 // 0: single frames at random places; 1: runs of 64 frames
	Seed          uint64

	TruthDir string // where truth files go; "" writes none

	// FaultAround leaves the kernel's fault-around on for the RAM mapping,
	// as in a QEMU guest: a read fault then maps up to 16 neighbouring
	// frames, and a pagemap tracker records them as touched. By default the
	// guest turns it off (faultaround.go), so that recorded working sets
	// are the frames it accessed; where the kernel cannot, it warns once and
	// runs with it.
	FaultAround bool

	// TickInterval spreads an interval's plan over time: TickFrames
	// operations, then a pause of TickInterval. 0 runs the plan at once.
	TickInterval time.Duration
	TickFrames   int // default 256

	// Ready is called once the guest's RAM is initialized and its QMP
	// socket listens (in-process use).
	Ready func()
}

func (c *Config) check() error {
	if c.MemPath == "" || c.QMPSocket == "" {
		return errors.New("synthguest: MemPath and QMPSocket are required")
	}
	if c.RAMSize == 0 || c.RAMSize%pageSize != 0 {
		return fmt.Errorf("synthguest: RAM size %d is not a positive multiple of %d", c.RAMSize, pageSize)
	}
	for _, f := range []float64{c.WSFraction, c.DirtyFraction, c.Locality} {
		if f < 0 || f > 1 {
			return fmt.Errorf("synthguest: fractions must be within [0, 1], got %v", f)
		}
	}
	if c.TickFrames <= 0 {
		c.TickFrames = 256
	}
	return nil
}

type guest struct {
	cfg    Config
	frames int
	ram    []byte
	file   *os.File // RAM file, for truth hashes by pread
	quit   context.CancelFunc

	stopReq atomic.Bool // the worker must park at the next operation

	mu struct {
		sync.Mutex
		cond     *sync.Cond
		running  bool
		status   string // QMP run state
		pauses   int    // pauses so far; the next stop is pause mu.pauses
		interval int    // the interval the worker should run; -1 before pause 0
		parked   bool
		accessed *roaring.Bitmap // truth of the interval the worker ran last
		changed  *roaring.Bitmap
		truthErr error

		migStatus string
		caps      map[string]bool
	}
}

// run runs the guest until ctx ends or a client sends `quit`.
func run(ctx context.Context, cfg Config) error {
	if err := cfg.check(); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g := &guest{cfg: cfg, frames: int(cfg.RAMSize / pageSize), quit: cancel}
	g.mu.cond = sync.NewCond(&g.mu.Mutex)
	g.mu.running = true
	g.mu.status = "running"
	g.mu.interval = -1
	g.mu.caps = map[string]bool{}

	f, err := os.OpenFile(cfg.MemPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("synthguest: %w", err)
	}
	defer f.Close()
	g.file = f
	// Start from zeros (holes), whatever the file held before.
	if err := f.Truncate(0); err != nil {
		return fmt.Errorf("synthguest: %w", err)
	}
	if err := f.Truncate(int64(cfg.RAMSize)); err != nil {
		return fmt.Errorf("synthguest: %w", err)
	}
	ram, err := unix.Mmap(int(f.Fd()), 0, int(cfg.RAMSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("synthguest: mapping %s: %w", cfg.MemPath, err)
	}
	defer unix.Munmap(ram)
	g.ram = ram
	if !cfg.FaultAround {
		if uffd, err := disableFaultAround(ram); err != nil {
			slog.Warn("synthguest: fault-around stays on: recorded working sets include neighbours of read frames", "err", err)
		} else {
			defer unix.Close(uffd)
		}
	}
	g.initRAM()
	if cfg.TruthDir != "" {
		if err := os.MkdirAll(cfg.TruthDir, 0o755); err != nil {
			return fmt.Errorf("synthguest: %w", err)
		}
	}

	_ = os.Remove(cfg.QMPSocket)
	ln, err := listenUnix(cfg.QMPSocket)
	if err != nil {
		return fmt.Errorf("synthguest: %w", err)
	}
	defer ln.Close()
	defer os.Remove(cfg.QMPSocket)

	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.worker(ctx)
	}()
	go func() {
		<-ctx.Done()
		ln.Close()
		g.mu.Lock()
		g.mu.cond.Broadcast()
		g.mu.Unlock()
	}()
	if cfg.Ready != nil {
		cfg.Ready()
	}
	g.serve(ctx, ln)
	cancel()
	g.stopReq.Store(true)
	wg.Wait()
	return nil
}

// mix is splitmix64's finalizer: a cheap, good 64-bit hash.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// initRAM fills the RAM with a mix of contents, like a booted guest: a
// quarter zero frames, compressible patterns, random data and duplicates.
func (g *guest) initRAM() {
	for p := 0; p < g.frames; p++ {
		h := mix(g.cfg.Seed ^ uint64(p)*0x100000001b3)
		frame := g.ram[p*pageSize : (p+1)*pageSize]
		switch h % 8 {
		case 0, 1: // zero frame
		case 2, 3, 4: // compressible: a 64-byte pattern repeated
			var pat [64]byte
			for i := 0; i < 64; i += 8 {
				binary.LittleEndian.PutUint64(pat[i:], mix(h+uint64(i)))
			}
			for i := 0; i < pageSize; i += 64 {
				copy(frame[i:], pat[:])
			}
		case 5: // duplicate of one of 16 frames
			for i := 0; i < pageSize; i += 8 {
				binary.LittleEndian.PutUint64(frame[i:], mix(g.cfg.Seed+(h>>60)<<32+uint64(i)))
			}
		default: // random
			for i := 0; i < pageSize; i += 8 {
				binary.LittleEndian.PutUint64(frame[i:], mix(h^uint64(i)<<40))
			}
		}
	}
}

type op struct {
	pfn   uint32
	write bool
}

// plan returns the operations of interval k.
func (g *guest) plan(k int) []op {
	n := g.frames
	ws := int(g.cfg.WSFraction*float64(n) + 0.5)
	dirty := int(g.cfg.DirtyFraction*float64(n) + 0.5)
	ws = min(max(ws, dirty), n)
	runLen := 1 + int(g.cfg.Locality*63+0.5)
	rng := rand.New(rand.NewPCG(g.cfg.Seed, uint64(k+1)))
	picked := make([]bool, n)
	ops := make([]op, 0, ws)
	for tries := 0; len(ops) < ws && tries < 8*n; tries++ {
		start := rng.IntN(n)
		for j := 0; j < runLen && len(ops) < ws; j++ {
			p := (start + j) % n
			if !picked[p] {
				picked[p] = true
				ops = append(ops, op{pfn: uint32(p)})
			}
		}
	}
	for p := 0; len(ops) < ws; p++ { // very high fractions: fill up in order
		if !picked[p] {
			picked[p] = true
			ops = append(ops, op{pfn: uint32(p)})
		}
	}
	// Choose the written subset at random, keeping the plan's order.
	for i := 0; i < dirty; i++ {
		j := i + rng.IntN(len(ops)-i)
		ops[i], ops[j] = ops[j], ops[i]
		ops[i].write = true
	}
	for i := dirty; i < len(ops); i++ {
		ops[i].write = false
	}
	return ops
}

var sink atomic.Uint64

// access performs one operation on the RAM through the mapping.
func (g *guest) access(k int, o op) {
	frame := g.ram[int(o.pfn)*pageSize : (int(o.pfn)+1)*pageSize]
	h := mix(g.cfg.Seed ^ uint64(k+1)<<32 ^ uint64(o.pfn))
	if !o.write {
		sink.Add(binary.LittleEndian.Uint64(frame[h%(pageSize/8)*8:]))
		return
	}
	if h%50 == 0 && !isZero(frame) {
		clear(frame)
		return
	}
	// The first XOR mask is never zero, so the content always changes.
	w0 := h % (pageSize / 8) * 8
	binary.LittleEndian.PutUint64(frame[w0:], binary.LittleEndian.Uint64(frame[w0:])^(mix(h)|1))
	for i := uint64(1); i < 8; i++ {
		x := mix(h + i)
		w := x % (pageSize / 8) * 8
		binary.LittleEndian.PutUint64(frame[w:], binary.LittleEndian.Uint64(frame[w:])^x)
	}
}

func isZero(b []byte) bool {
	for i := 0; i < len(b); i += 8 {
		if binary.LittleEndian.Uint64(b[i:]) != 0 {
			return false
		}
	}
	return true
}

// worker runs the plan of every interval, parking at each stop.
func (g *guest) worker(ctx context.Context) {
	k := -1
	for ctx.Err() == nil {
		acc, chg := roaring.New(), roaring.New()
		ops := g.plan(k)
		for i, o := range ops {
			if g.stopReq.Load() {
				break
			}
			acc.Add(o.pfn)
			if o.write {
				chg.Add(o.pfn)
			}
			g.access(k, o)
			if g.cfg.TickInterval > 0 && (i+1)%g.cfg.TickFrames == 0 {
				g.sleep(ctx, g.cfg.TickInterval)
			}
		}
		g.mu.Lock()
		g.mu.accessed, g.mu.changed = acc, chg
		g.mu.parked = true
		g.mu.cond.Broadcast()
		for ctx.Err() == nil && !(g.mu.running && g.mu.interval != k) {
			g.mu.cond.Wait()
		}
		g.mu.parked = false
		k = g.mu.interval
		g.mu.Unlock()
	}
}

// sleep waits d, or less when a stop comes.
func (g *guest) sleep(ctx context.Context, d time.Duration) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) && !g.stopReq.Load() && ctx.Err() == nil {
		time.Sleep(min(time.Until(deadline), 200*time.Microsecond))
	}
}

// stop pauses the workload and writes the truth of the interval that ended.
// It returns when the workload stopped.
func (g *guest) stop() (time.Time, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.mu.running {
		return time.Now(), nil
	}
	g.stopReq.Store(true)
	for !g.mu.parked {
		g.mu.cond.Wait()
	}
	parked := time.Now()
	g.mu.running = false
	g.mu.status = "paused"
	n := g.mu.pauses
	g.mu.pauses++
	if g.cfg.TruthDir != "" {
		if err := g.writeTruthLocked(n); err != nil {
			g.mu.truthErr = err
			return parked, err
		}
	}
	return parked, nil
}

func (g *guest) cont() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.mu.running {
		return
	}
	g.mu.running = true
	g.mu.status = "running"
	g.mu.interval = g.mu.pauses - 1
	g.stopReq.Store(false)
	g.mu.cond.Broadcast()
}

func (g *guest) writeTruthLocked(n int) error {
	dir := g.cfg.TruthDir
	if n > 0 {
		if err := writeAtomic(filepath.Join(dir, strconv.Itoa(n-1)+".accessed"), []byte(index.FormatList(g.mu.accessed))); err != nil {
			return err
		}
		if err := writeAtomic(filepath.Join(dir, strconv.Itoa(n-1)+".changed"), []byte(index.FormatList(g.mu.changed))); err != nil {
			return err
		}
	}
	hashes := make([]byte, 8*g.frames)
	buf := make([]byte, 256*pageSize)
	for off := 0; off < len(g.ram); off += len(buf) {
		b := buf[:min(len(buf), len(g.ram)-off)]
		if _, err := g.file.ReadAt(b, int64(off)); err != nil {
			return fmt.Errorf("synthguest: reading RAM for truth: %w", err)
		}
		for i := 0; i < len(b); i += pageSize {
			binary.LittleEndian.PutUint64(hashes[(off+i)/pageSize*8:], xxh3.Hash(b[i:i+pageSize]))
		}
	}
	return writeAtomic(filepath.Join(dir, "pause-"+strconv.Itoa(n)+".hashes"), hashes)
}

func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("synthguest: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("synthguest: %w", err)
	}
	return nil
}

// FrameHash is the hash of one frame in pause-<n>.hashes.
func FrameHash(frame []byte) uint64 { return xxh3.Hash(frame) }

// ReadPauseHashes reads the frame hashes of pause n from a truth directory.
func ReadPauseHashes(dir string, n int) ([]uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "pause-"+strconv.Itoa(n)+".hashes"))
	if err != nil {
		return nil, err
	}
	out := make([]uint64, len(b)/8)
	for i := range out {
		out[i] = binary.LittleEndian.Uint64(b[i*8:])
	}
	return out, nil
}

// ReadIntervalTruth reads the accessed and changed frames of interval i.
func ReadIntervalTruth(dir string, i int, frames uint64) (accessed, changed *roaring.Bitmap, err error) {
	for _, x := range []struct {
		ext string
		dst **roaring.Bitmap
	}{{".accessed", &accessed}, {".changed", &changed}} {
		b, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(i)+x.ext))
		if err != nil {
			return nil, nil, err
		}
		if *x.dst, err = index.ParseList(b, frames); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", x.ext, err)
		}
	}
	return accessed, changed, nil
}

// DeviceState is the fake device state the guest sends for a migration at
// pause n (the pause count at the time of `migrate`, n = pauses-1).
func DeviceState(seed uint64, pause int) []byte {
	head := fmt.Sprintf("CKPTFS-SYNTHGUEST-DEVICE-STATE pause=%d seed=%d\n", pause, seed)
	b := make([]byte, 8192)
	n := copy(b, head)
	for i := (n + 7) &^ 7; i+8 <= len(b); i += 8 {
		binary.LittleEndian.PutUint64(b[i:], mix(seed+uint64(pause)<<20+uint64(i)))
	}
	return b
}

type qmpMsg struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id,omitempty"`
}
