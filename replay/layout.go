package replay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/ckptfs/ckptfs/index/rawfmt"
	"github.com/ckptfs/ckptfs/index/runfmt"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrRunNotFound     = errors.New("replay: run not found")
	ErrNoCheckpoint    = errors.New("replay: checkpoint not in the mount")
	ErrNoWorkingSet    = errors.New("replay: interval has no working set")
	ErrNoDeviceState   = errors.New("replay: checkpoint has no device state")
	ErrNoQEMU          = errors.New("replay: QEMU binary not found")
	ErrRAMSizeMismatch = errors.New("replay: RAM size does not match the recording")
	ErrBadConfig       = errors.New("replay: bad configuration")
	ErrChild           = errors.New("replay: measurement child failed")
)

// runDir is one run's directory in a mount (or in any directory with the
// same layout, DESIGN.md "The mount").
type runDir struct {
	mount, run string
	dir        string
	info       runfmt.RunInfo
}

func (r *runDir) ramPath(i int) string  { return filepath.Join(r.dir, strconv.Itoa(i)+".ram") }
func (r *runDir) wsPath(i int) string   { return filepath.Join(r.dir, strconv.Itoa(i)+".ws") }
func (r *runDir) statPath(i int) string { return filepath.Join(r.dir, strconv.Itoa(i)+".json") }
func (r *runDir) devPath(i int) string  { return filepath.Join(r.dir, strconv.Itoa(i)+".dev") }
func (r *runDir) fullPath(i int) string {
	return filepath.Join(r.dir, "full", strconv.Itoa(i)+".ram")
}

func (r *runDir) pageSize() int64 {
	if r.info.PageSize == 0 {
		return 4096
	}
	return int64(r.info.PageSize)
}

func (r *runDir) frames() uint64 { return r.info.RAMSize / uint64(r.pageSize()) }

// openRun reads MNT/<run>/run.json. A run directory without run.json is
// accepted when ram_size can be taken from full/0.ram (plain directories made
// by hand); page_size then defaults to 4096.
func openRun(mount, run string) (*runDir, error) {
	if mount == "" || run == "" {
		return nil, fmt.Errorf("%w: mount and run are required", ErrBadConfig)
	}
	if err := runfmt.ValidRunName(run); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadConfig, err)
	}
	r := &runDir{mount: mount, run: run, dir: filepath.Join(mount, run)}
	st, err := os.Stat(r.dir)
	if err != nil || !st.IsDir() {
		return nil, fmt.Errorf("%w: %s is not a directory", ErrRunNotFound, r.dir)
	}
	data, err := os.ReadFile(filepath.Join(r.dir, "run.json"))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &r.info); err != nil {
			return nil, fmt.Errorf("replay: %s: %v", filepath.Join(r.dir, "run.json"), err)
		}
	case errors.Is(err, fs.ErrNotExist):
		fi, ferr := os.Stat(r.fullPath(0))
		if ferr != nil {
			return nil, fmt.Errorf("%w: %s has neither run.json nor full/0.ram", ErrRunNotFound, r.dir)
		}
		r.info = runfmt.RunInfo{RunRecord: runfmt.RunRecord{Name: run, RAMSize: uint64(fi.Size()), PageSize: 4096}}
	default:
		return nil, fmt.Errorf("replay: %v", err)
	}
	if r.info.RAMSize == 0 {
		return nil, fmt.Errorf("replay: %s: ram_size is 0", filepath.Join(r.dir, "run.json"))
	}
	if ps := r.pageSize(); ps&(ps-1) != 0 || r.info.RAMSize%uint64(ps) != 0 {
		return nil, fmt.Errorf("replay: %s: ram_size %d is not a multiple of page_size %d",
			filepath.Join(r.dir, "run.json"), r.info.RAMSize, ps)
	}
	return r, nil
}

// intervalsWithWS lists the intervals i for which <i>.ram exists (those whose
// working set is known), in order.
func (r *runDir) intervalsWithWS() ([]int, error) {
	ents, err := os.ReadDir(r.dir)
	if err != nil {
		return nil, fmt.Errorf("replay: %v", err)
	}
	var out []int
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".ram")
		if !ok || e.IsDir() {
			continue
		}
		i, err := strconv.Atoi(name)
		if err != nil || i < 0 || strconv.Itoa(i) != name {
			continue
		}
		out = append(out, i)
	}
	sort.Ints(out)
	return out, nil
}

// checkRAMFile checks that path exists and has the run's RAM size.
func (r *runDir) checkRAMFile(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if uint64(fi.Size()) != r.info.RAMSize {
		return fmt.Errorf("%w: %s has %d bytes, run.json says ram_size %d",
			ErrRAMSizeMismatch, path, fi.Size(), r.info.RAMSize)
	}
	return nil
}

// frameRun is a run of consecutive frames [Start, Start+Count).
type frameRun struct {
	Start, Count uint64
}

// readRuns reads a working set in list format and returns it as coalesced
// runs of frames, in order, and the number of frames.
func readRuns(path string, frames uint64) ([]frameRun, uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, err
	}
	bm, err := rawfmt.ParseList(data, frames)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", path, err)
	}
	var runs []frameRun
	it := bm.ManyIterator()
	buf := make([]uint32, 8192)
	for n := it.NextMany(buf); n > 0; n = it.NextMany(buf) {
		for _, v := range buf[:n] {
			p := uint64(v)
			if k := len(runs); k > 0 && runs[k-1].Start+runs[k-1].Count == p {
				runs[k-1].Count++
				continue
			}
			runs = append(runs, frameRun{Start: p, Count: 1})
		}
	}
	return runs, bm.GetCardinality(), nil
}

// intervalStats reads <i>.json; ok is false when it is missing or unreadable.
func (r *runDir) intervalStats(i int) (runfmt.IntervalStats, bool) {
	data, err := os.ReadFile(r.statPath(i))
	if err != nil {
		return runfmt.IntervalStats{}, false
	}
	var st runfmt.IntervalStats
	if err := json.Unmarshal(data, &st); err != nil {
		return runfmt.IntervalStats{}, false
	}
	return st, true
}
