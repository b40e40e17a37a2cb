package replay

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// loadChunk is the largest single pread of the eager loaders.
const loadChunk = 4 << 20

// loader performs one load in a child.
type loader struct {
	job       childJob
	frames    uint64
	runs      []frameRun
	f         *os.File
	region    []byte // the anonymous copy or the file mapping
	bytesRead uint64
	touched   uint64
}

// sink keeps the touch loop's loads alive.
var sink byte

func (l *loader) load() error {
	var err error
	switch l.job.Mode {
	case ModeFull:
		if l.f, err = os.Open(l.job.RAM); err != nil {
			return err
		}
		if err := l.allocAnon(); err != nil {
			return err
		}
		return l.readRuns([]frameRun{{0, l.frames}})
	case ModeSparse:
		// Open first: on the mount that starts the prefetch of W_i, which
		// then overlaps with reading the list.
		if l.f, err = os.Open(l.job.RAM); err != nil {
			return err
		}
		runs, _, err := readRuns(l.job.WS, l.frames)
		if err != nil {
			return err
		}
		if err := l.emulatePrefetch(runs); err != nil {
			return err
		}
		// Read exactly W_i: no readahead past a run into the holes (on
		// the mount those reads would count as working-set misses).
		_ = unix.Fadvise(int(l.f.Fd()), 0, 0, unix.FADV_RANDOM)
		if err := l.allocAnon(); err != nil {
			return err
		}
		return l.readRuns(runs)
	case ModeLazy, ModeLazyNoPrefetch:
		// Opening <i>.ram starts the mount's working-set prefetch.
		if l.f, err = os.Open(l.job.RAM); err != nil {
			return err
		}
		if err := l.emulatePrefetch(l.runs); err != nil {
			return err
		}
		if l.region, err = unix.Mmap(int(l.f.Fd()), 0, int(l.job.RAMSize),
			unix.PROT_READ, unix.MAP_PRIVATE); err != nil {
			return fmt.Errorf("mmap %s: %w", l.job.RAM, err)
		}
		ps := uint64(l.job.PageSize)
		var s byte
		for _, r := range l.runs {
			for p := r.Start; p < r.Start+r.Count; p++ {
				s += l.region[p*ps]
			}
			l.touched += r.Count
		}
		sink = s
		return nil
	case modeFloor:
		return l.fill()
	}
	return fmt.Errorf("unknown mode %q", l.job.Mode)
}

// fill is the floor of any loader that copies the frames of l.runs into
// memory: populate fresh anonymous memory for them, as (a) and (b) do, and
// copy into it from a small buffer that stays in the CPU cache, so that
// neither a file system nor a page cache is involved.
func (l *loader) fill() error {
	if err := l.allocAnon(); err != nil {
		return err
	}
	ps := uint64(l.job.PageSize)
	src := make([]byte, 64<<10)
	for i := range src {
		src[i] = byte(i*7 + 1)
	}
	for _, r := range l.runs {
		off, end := r.Start*ps, (r.Start+r.Count)*ps
		_ = unix.Madvise(l.region[off:end], unix.MADV_POPULATE_WRITE)
		for ; off < end; off += uint64(len(src)) {
			copy(l.region[off:end], src)
		}
		l.touched += r.Count
	}
	return nil
}

// emulatePrefetch does what the mount does when <i>.ram is opened, when the
// job asks for it: ask for W_i's pages (posix_fadvise WILLNEED per run).
func (l *loader) emulatePrefetch(runs []frameRun) error {
	if !l.job.EmulatePrefetch {
		return nil
	}
	ps := l.job.PageSize
	for _, r := range runs {
		if err := unix.Fadvise(int(l.f.Fd()), int64(r.Start)*ps, int64(r.Count)*ps,
			unix.FADV_WILLNEED); err != nil {
			return fmt.Errorf("fadvise WILLNEED %s: %w", l.job.RAM, err)
		}
	}
	return nil
}

// allocAnon maps the anonymous memory an eager loader fills, without
// transparent huge pages so that its resident size counts 4 KiB frames.
func (l *loader) allocAnon() error {
	var err error
	l.region, err = unix.Mmap(-1, 0, int(l.job.RAMSize), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return fmt.Errorf("mmap %d anonymous bytes: %w", l.job.RAMSize, err)
	}
	_ = unix.Madvise(l.region, unix.MADV_NOHUGEPAGE)
	return nil
}

// readRuns preads the frames of runs from the file into the same offsets of
// the anonymous region, in chunks of at most loadChunk bytes.
func (l *loader) readRuns(runs []frameRun) error {
	ps := uint64(l.job.PageSize)
	fd := int(l.f.Fd())
	for _, r := range runs {
		off, end := r.Start*ps, (r.Start+r.Count)*ps
		// Fault the destination in one call per run, as a careful loader
		// does: 4 KiB faults inside pread cost several times the copy.
		// Kernels before 5.14 lack it and fault page by page.
		_ = unix.Madvise(l.region[off:end], unix.MADV_POPULATE_WRITE)
		for off < end {
			n := min(end-off, loadChunk)
			got, err := unix.Pread(fd, l.region[off:off+n], int64(off))
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return fmt.Errorf("read %s at %d: %w", l.job.RAM, off, err)
			}
			if got == 0 {
				return fmt.Errorf("read %s at %d: unexpected end of file", l.job.RAM, off)
			}
			off += uint64(got)
			l.bytesRead += uint64(got)
		}
		l.touched += r.Count
	}
	return nil
}

// cacheBytes counts the page-cache pages of the loaded file (mincore). The
// lazy modes ask their own mapping; the eager ones map the file read-only
// just for the question, which faults nothing in.
func (l *loader) cacheBytes() (uint64, error) {
	if l.job.Mode == modeFloor {
		return 0, nil // it reads no file
	}
	m := l.region
	if l.job.Mode == ModeFull || l.job.Mode == ModeSparse {
		var err error
		m, err = unix.Mmap(int(l.f.Fd()), 0, int(l.job.RAMSize), unix.PROT_READ, unix.MAP_PRIVATE)
		if err != nil {
			return 0, fmt.Errorf("mmap %s for mincore: %w", l.job.RAM, err)
		}
		defer unix.Munmap(m)
	}
	return mincoreBytes(m)
}

func (l *loader) close() {
	if l.region != nil {
		_ = unix.Munmap(l.region)
		l.region = nil
	}
	if l.f != nil {
		if l.job.Cold {
			_ = unix.Fadvise(int(l.f.Fd()), 0, 0, unix.FADV_DONTNEED)
		}
		l.f.Close()
	}
}

func mincoreBytes(m []byte) (uint64, error) {
	if len(m) == 0 {
		return 0, nil
	}
	sys := int64(os.Getpagesize())
	vec := make([]byte, (int64(len(m))+sys-1)/sys)
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptrOf(m), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0])))
	if e != 0 {
		return 0, fmt.Errorf("mincore: %w", e)
	}
	var n uint64
	for _, v := range vec {
		n += uint64(v & 1)
	}
	return n * uint64(sys), nil
}

func uintptrOf(m []byte) uintptr { return uintptr(unsafe.Pointer(&m[0])) }
