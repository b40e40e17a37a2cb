package replay

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// childEnv names the environment variable that turns a process into a
// measurement child; its value is the job as JSON.
const childEnv = "CKPTFS_REPLAY_CHILD"

// Protocol lines of a child on stdout. The parent writes "go\n" on the
// child's stdin to start the load, and closes stdin to let it exit.
const (
	childReady = "ckptfs-replay-child ready"
	childGo    = "go"
)

// loadChunk is the largest single pread of the eager loaders.
const loadChunk = 4 << 20

// MaybeRunChild runs a measurement child of Bench and exits, when the process
// was started as one (the environment variable CKPTFS_REPLAY_CHILD is set);
// otherwise it returns at once and does nothing.
//
// Bench measures in child processes that re-execute os.Executable(), so every
// program that calls Bench must call MaybeRunChild first thing in main (and a
// test package first thing in TestMain), before flags are parsed or a mount
// is served. A binary that does not is detected by the missing handshake and
// Bench fails with ErrChild.
func MaybeRunChild() {
	job := os.Getenv(childEnv)
	if job == "" {
		return
	}
	os.Exit(runChild(job, os.Stdin, os.Stdout))
}

// childJob is what one child loads.
type childJob struct {
	Mode     Mode   `json:"mode"`
	RAM      string `json:"ram"` // full/<i>.ram for ModeFull, <i>.ram otherwise
	WS       string `json:"ws"`  // <i>.ws (not used by ModeFull)
	RAMSize  uint64 `json:"ram_size"`
	PageSize int64  `json:"page_size"`
	Cold     bool   `json:"cold"` // drop the file's page cache (fadvise) before exiting
	// EmulatePrefetch makes a lazy child do what the mount does on open:
	// ask for W_i's pages (posix_fadvise WILLNEED per run).
	EmulatePrefetch bool `json:"emulate_prefetch,omitempty"`
}

// childResult is what one child measured.
type childResult struct {
	LoadNS int64 `json:"load_ns"`
	// RegionBytes is the resident size of the memory the loader filled or
	// mapped (Rss of that one mapping, /proc/self/smaps): the private copy
	// for eager loads, the mapped file pages for lazy ones.
	RegionBytes uint64 `json:"region_bytes"`
	// CacheBytes is the page cache of the loaded file after the load
	// (mincore over a mapping of the whole file).
	CacheBytes uint64 `json:"cache_bytes"`
	// Deltas of the child's /proc/self/status over the load.
	RSSDelta  int64  `json:"rss_delta"`
	AnonDelta int64  `json:"anon_delta"`
	FileDelta int64  `json:"file_delta"` // RssFile + RssShmem
	BytesRead uint64 `json:"bytes_read"`
	Frames    uint64 `json:"frames"` // frames loaded or touched
	MajFlt    int64  `json:"majflt"`
	MinFlt    int64  `json:"minflt"`
	Err       string `json:"err,omitempty"`
}

func runChild(jobJSON string, in io.Reader, out io.Writer) int {
	var job childJob
	res := childResult{}
	fail := func(err error) int {
		res.Err = err.Error()
		b, _ := json.Marshal(res)
		fmt.Fprintf(out, "%s\n", b)
		return 1
	}
	if err := json.Unmarshal([]byte(jobJSON), &job); err != nil {
		return fail(fmt.Errorf("bad job: %v", err))
	}
	if job.PageSize <= 0 || job.RAMSize == 0 || job.RAMSize%uint64(job.PageSize) != 0 {
		return fail(fmt.Errorf("bad job: ram_size %d, page_size %d", job.RAMSize, job.PageSize))
	}
	frames := job.RAMSize / uint64(job.PageSize)

	// Preparation, not measured: the lazy modes stand in for a guest that
	// touches W_i, so they learn W_i before the clock starts, and the
	// floor fills W_i (or, without a list, every frame) from memory.
	var runs []frameRun
	switch {
	case job.Mode == modeFloor && job.WS == "":
		runs = []frameRun{{0, frames}}
	case job.Mode == modeFloor || job.Mode.lazy():
		var err error
		if runs, _, err = readRuns(job.WS, frames); err != nil {
			return fail(err)
		}
	}
	fmt.Fprintf(out, "%s\n", childReady)
	rd := bufio.NewReader(in)
	line, err := rd.ReadString('\n')
	if err != nil || strings.TrimSpace(line) != childGo {
		return fail(fmt.Errorf("no go from the parent (%q, %v)", line, err))
	}

	l := &loader{job: job, frames: frames, runs: runs}
	defer l.close()
	before, err := readStatus()
	if err != nil {
		return fail(err)
	}
	var ru0 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	t0 := time.Now()
	if err := l.load(); err != nil {
		return fail(err)
	}
	res.LoadNS = int64(time.Since(t0))
	var ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	after, err := readStatus()
	if err != nil {
		return fail(err)
	}
	res.MajFlt = ru1.Majflt - ru0.Majflt
	res.MinFlt = ru1.Minflt - ru0.Minflt
	res.RSSDelta = after.rss - before.rss
	res.AnonDelta = after.anon - before.anon
	res.FileDelta = (after.file + after.shmem) - (before.file + before.shmem)
	res.BytesRead, res.Frames = l.bytesRead, l.touched
	if res.RegionBytes, err = regionRss(l.region); err != nil {
		return fail(err)
	}
	if res.CacheBytes, err = l.cacheBytes(); err != nil {
		return fail(err)
	}
	b, _ := json.Marshal(res)
	fmt.Fprintf(out, "%s\n", b)
	// Hold the memory until the parent lets go, so that concurrent
	// replays are resident at the same time.
	_, _ = io.Copy(io.Discard, rd)
	return 0
}

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

// procStatus holds the memory lines of /proc/self/status, in bytes.
type procStatus struct {
	rss, anon, file, shmem int64
}

func readStatus() (procStatus, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return procStatus{}, err
	}
	var st procStatus
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "VmRSS":
			dst = &st.rss
		case "RssAnon":
			dst = &st.anon
		case "RssFile":
			dst = &st.file
		case "RssShmem":
			dst = &st.shmem
		default:
			continue
		}
		*dst = parseKB(val)
	}
	return st, nil
}

// parseKB parses " 1234 kB" into bytes.
func parseKB(s string) int64 {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseInt(f[0], 10, 64)
	return v * 1024
}

// regionRss returns the Rss of the mapping that starts at m, from
// /proc/self/smaps.
func regionRss(m []byte) (uint64, error) {
	if len(m) == 0 {
		return 0, nil
	}
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	start := fmt.Sprintf("%x-", uintptrOf(m))
	in := false
	for _, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if isSmapsHeader(line) {
			in = bytes.HasPrefix(line, []byte(start))
			continue
		}
		if in && bytes.HasPrefix(line, []byte("Rss:")) {
			return uint64(parseKB(string(line[len("Rss:"):]))), nil
		}
	}
	return 0, fmt.Errorf("mapping at %s not in /proc/self/smaps", start)
}

// isSmapsHeader reports whether a smaps line starts a mapping ("start-end perms ...").
func isSmapsHeader(line []byte) bool {
	dash := bytes.IndexByte(line, '-')
	if dash <= 0 {
		return false
	}
	for _, c := range line[:dash] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

func uintptrOf(m []byte) uintptr { return uintptr(unsafe.Pointer(&m[0])) }
