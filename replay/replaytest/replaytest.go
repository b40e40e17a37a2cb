// Package replaytest writes synthetic runs in the layout of a ckptfs mount
// (DESIGN.md "The mount") into a plain directory, so that replay.Bench and
// the replay CLI can be tested without FUSE or a recorder.
package replaytest

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"

	"github.com/RoaringBitmap/roaring/v2"

	"github.com/ckptfs/ckptfs/index/rawfmt"
	"github.com/ckptfs/ckptfs/index/runfmt"
)

// Config describes a synthetic run.
type Config struct {
	RAMSize   uint64  // bytes; default 64 MiB
	PageSize  uint32  // default 4096
	Intervals int     // intervals with a working set; default 3 (checkpoints 0..Intervals)
	WSFrac    float64 // |W_i| / frames; default 0.2
	// RunFrames is the length of the runs W_i is made of (W_i is a random
	// set of aligned blocks of this many frames); default 256 (1 MiB).
	RunFrames int
	// ZeroFrac is the fraction of all-zero frames (holes) in full/<i>.ram;
	// default 0, a dense checkpoint.
	ZeroFrac float64
	Seed     uint64
	// DeviceState, when set, is written as <i>.dev of every checkpoint.
	DeviceState []byte
	// Meta goes into run.json.
	Meta map[string]string
}

// Run is what WriteRun wrote.
type Run struct {
	Dir        string // MNT/<run>
	Info       runfmt.RunInfo
	WS         []*roaring.Bitmap // W_i by interval
	MeanWSFrac float64
}

// WriteRun writes MNT/<run>/{run.json, <i>.ram, <i>.ws, <i>.json, full/<i>.ram}
// and fsyncs every file, so that dropping caches makes them cold. <i>.ram is
// sparse: W_i frames are data, all others holes.
func WriteRun(mount, run string, cfg Config) (*Run, error) {
	if cfg.RAMSize == 0 {
		cfg.RAMSize = 64 << 20
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = 4096
	}
	if cfg.Intervals == 0 {
		cfg.Intervals = 3
	}
	if cfg.WSFrac == 0 {
		cfg.WSFrac = 0.2
	}
	if cfg.RunFrames == 0 {
		cfg.RunFrames = 256
	}
	ps := uint64(cfg.PageSize)
	if cfg.RAMSize%ps != 0 {
		return nil, fmt.Errorf("replaytest: ram size %d not a multiple of %d", cfg.RAMSize, ps)
	}
	frames := cfg.RAMSize / ps
	dir := filepath.Join(mount, run)
	if err := os.MkdirAll(filepath.Join(dir, "full"), 0o755); err != nil {
		return nil, err
	}
	info := runfmt.RunInfo{
		RunRecord: runfmt.RunRecord{Name: run, RAMSize: cfg.RAMSize, PageSize: cfg.PageSize,
			Recorder: "replaytest", Tracker: "synthetic", Meta: cfg.Meta},
		Frames: frames, Checkpoints: cfg.Intervals + 1, Intervals: cfg.Intervals,
	}
	if err := writeJSON(filepath.Join(dir, "run.json"), info); err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x636b70746673))
	out := &Run{Dir: dir, Info: info}
	blocks := (frames + uint64(cfg.RunFrames) - 1) / uint64(cfg.RunFrames)
	want := int(float64(blocks)*cfg.WSFrac + 0.5)
	var fracSum float64
	for i := 0; i <= cfg.Intervals; i++ {
		name := strconv.Itoa(i)
		if err := writeFull(filepath.Join(dir, "full", name+".ram"), cfg, i); err != nil {
			return nil, err
		}
		if cfg.DeviceState != nil {
			if err := writeSync(filepath.Join(dir, name+".dev"), cfg.DeviceState); err != nil {
				return nil, err
			}
		}
		if i == cfg.Intervals {
			break // the last checkpoint's interval has no working set yet
		}
		ws := roaring.New()
		for _, b := range rng.Perm(int(blocks))[:want] {
			lo := uint64(b) * uint64(cfg.RunFrames)
			ws.AddRange(lo, min(lo+uint64(cfg.RunFrames), frames))
		}
		out.WS = append(out.WS, ws)
		fracSum += float64(ws.GetCardinality()) / float64(frames)
		if err := writeSync(filepath.Join(dir, name+".ws"), []byte(rawfmt.FormatList(ws))); err != nil {
			return nil, err
		}
		if err := writeSparse(filepath.Join(dir, name+".ram"), cfg, i, ws); err != nil {
			return nil, err
		}
		st := runfmt.IntervalStats{Interval: i, WorkingSetFrames: ws.GetCardinality(),
			DirtyFrames: ws.GetCardinality() / 4}
		if err := writeJSON(filepath.Join(dir, name+".json"), st); err != nil {
			return nil, err
		}
	}
	out.MeanWSFrac = fracSum / float64(cfg.Intervals)
	return out, nil
}

// frame fills buf with the content of pfn at checkpoint i (never all zero).
func frame(buf []byte, i int, pfn uint64) {
	for o := 0; o+16 <= len(buf); o += 16 {
		v := pfn*2654435761 + uint64(i)*40503 + uint64(o)
		for k := 0; k < 8; k++ {
			buf[o+k] = byte(v >> (8 * k))
		}
		for k := 8; k < 16; k++ {
			buf[o+k] = byte(i) | 1
		}
	}
}

// content fills buf with pfn at checkpoint i: all zero for a fraction
// ZeroFrac of the frames (chosen by a hash, so both files agree), else frame.
func content(buf []byte, cfg Config, i int, pfn uint64) {
	if cfg.ZeroFrac > 0 {
		h := (pfn*0x9e3779b97f4a7c15 ^ uint64(i)*0xbf58476d1ce4e5b9 ^ cfg.Seed) * 0x94d049bb133111eb
		if float64(h>>11)/float64(1<<53) < cfg.ZeroFrac {
			clear(buf)
			return
		}
	}
	frame(buf, i, pfn)
}

func writeFull(path string, cfg Config, i int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	ps := int(cfg.PageSize)
	frames := cfg.RAMSize / uint64(ps)
	const batch = 256
	buf := make([]byte, batch*ps)
	for p := uint64(0); p < frames; p += batch {
		n := min(uint64(batch), frames-p)
		chunk := buf[:int(n)*ps]
		for k := uint64(0); k < n; k++ {
			fr := chunk[int(k)*ps : int(k+1)*ps]
			content(fr, cfg, i, p+k)
		}
		if _, err := f.WriteAt(chunk, int64(p)*int64(ps)); err != nil {
			f.Close()
			return err
		}
	}
	return syncClose(f)
}

func writeSparse(path string, cfg Config, i int, ws *roaring.Bitmap) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	ps := int64(cfg.PageSize)
	buf := make([]byte, ps)
	it := ws.Iterator()
	for it.HasNext() {
		p := uint64(it.Next())
		content(buf, cfg, i, p)
		if _, err := f.WriteAt(buf, int64(p)*ps); err != nil {
			f.Close()
			return err
		}
	}
	if err := f.Truncate(int64(cfg.RAMSize)); err != nil {
		f.Close()
		return err
	}
	return syncClose(f)
}

func writeJSON(path string, v any) error {
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeSync(path, append(data, '\n'))
}

func writeSync(path string, data []byte) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return syncClose(f)
}

func syncClose(f *os.File) error {
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
