package replay

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// TouchReport is what the working-set plugin, loaded into a replay with
// mem=on, saw the guest execute, load or store, against W_I. Precision =
// InWS / WSFrames: a lower bound, because QEMU's page-table walks (and its
// own reads when it restores the checkpoint) do not pass the plugin.
// OutsideWS counts frames the replay touched that W_I lacks: a frame W_I
// missed, so it must be 0.
type TouchReport struct {
	Frames    uint64  `json:"frames"`
	WSFrames  uint64  `json:"ws_frames"`
	InWS      uint64  `json:"in_ws"`
	OutsideWS uint64  `json:"outside_ws"`
	Precision float64 `json:"precision"`
	// FirstOutside lists the lowest pfns outside W_I, at most maxOutsideListed.
	FirstOutside []uint64 `json:"first_outside,omitempty"`
}

// touchTrailerWords is the length, in 8-byte words, of the trailer the
// working-set plugin expects after the per-frame counters.
const touchTrailerWords = 3

// maxOutsideListed bounds TouchReport.FirstOutside.
const maxOutsideListed = 16

// touchCounters is the plugin's counters file of one replay: 8 bytes per
// frame of guest RAM, non-zero for a frame touched.
type touchCounters struct {
	path   string
	frames uint64
}

// newTouchCounters creates the zeroed counters file in dir.
func newTouchCounters(dir string, frames uint64) (*touchCounters, error) {
	t := &touchCounters{path: filepath.Join(dir, "touched.counters"), frames: frames}
	f, err := os.OpenFile(t.path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	// The plugin's counters file ends with a trailer of execTrailerWords
	// words (kvmrec/exectrack.go), which a replay ignores.
	err = f.Truncate(int64((frames + touchTrailerWords) * 8))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return t, err
}

// pluginArg is the -plugin value that loads so into the replay to fill the
// counters: its exec counters find guest RAM by ramFile; mem=on adds loads
// and stores; wp=off, since fault-around does not matter in a replay;
// random=on keeps the kernel from reading holes around faults.
func (t *touchCounters) pluginArg(so, ramFile string) string {
	return fmt.Sprintf("%s,ram=%s,counters=%s,mem=on,wp=off,random=on", optEscape(so), optEscape(ramFile), optEscape(t.path))
}

// report reads the counters (QEMU must have stopped writing them) and
// compares them with W_I.
func (t *touchCounters) report(ws []frameRun, wsFrames uint64) (*TouchReport, error) {
	data, err := os.ReadFile(t.path)
	if err != nil {
		return nil, err
	}
	if uint64(len(data)) != (t.frames+touchTrailerWords)*8 {
		return nil, fmt.Errorf("%s: %d bytes, want 8 per frame of %d and %d more", t.path, len(data), t.frames, touchTrailerWords)
	}
	return compareTouched(data[:t.frames*8], ws, wsFrames)
}

// compareTouched counts the frames with a non-zero little-endian 64-bit
// counter in data, inside and outside the runs of ws (sorted, as readRuns
// returns them).
func compareTouched(data []byte, ws []frameRun, wsFrames uint64) (*TouchReport, error) {
	if len(data)%8 != 0 {
		return nil, fmt.Errorf("touch counters: %d bytes is not a whole number of 8-byte counters", len(data))
	}
	r := &TouchReport{WSFrames: wsFrames}
	for pfn := uint64(0); pfn < uint64(len(data)/8); pfn++ {
		if binary.LittleEndian.Uint64(data[pfn*8:]) == 0 {
			continue
		}
		r.Frames++
		// The first run that ends after pfn.
		k := sort.Search(len(ws), func(k int) bool { return ws[k].Start+ws[k].Count > pfn })
		if k < len(ws) && ws[k].Start <= pfn {
			r.InWS++
			continue
		}
		r.OutsideWS++
		if len(r.FirstOutside) < maxOutsideListed {
			r.FirstOutside = append(r.FirstOutside, pfn)
		}
	}
	if wsFrames > 0 {
		r.Precision = float64(r.InWS) / float64(wsFrames)
	}
	return r, nil
}
