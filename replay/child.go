package replay

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

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
