package kvmrec

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// A deterministic recording cannot save device state with `migrate`: under
// record/replay QEMU 7.2 aborts in it (replay_save_clock asserts the replay
// mutex). xen-save-devices-state with live=false, VM stopped, writes every
// device's state but no RAM, the replay position (log offset and
// instruction count) included, and a replay loads it with migrate-incoming.

// saveReplayDeviceState writes the stopped VM's device state into a file in
// dir and returns its content.
func (r *recorder) saveReplayDeviceState(ctx context.Context, dir string, i int) ([]byte, error) {
	path := filepath.Join(dir, fmt.Sprintf("dev.%d", i))
	defer os.Remove(path)
	if err := r.qmp.Execute(ctx, "xen-save-devices-state", map[string]any{"filename": path, "live": false}, nil); err != nil {
		return nil, fmt.Errorf("xen-save-devices-state: %w", err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) == 0 {
		return nil, errors.New("QEMU saved an empty device state")
	}
	return b, nil
}

// queryICount returns the guest's instruction count (QMP query-replay).
func (r *recorder) queryICount(ctx context.Context) (uint64, error) {
	var st struct {
		Mode   string `json:"mode"`
		ICount uint64 `json:"icount"`
	}
	if err := r.qmp.Execute(ctx, "query-replay", nil, &st); err != nil {
		return 0, fmt.Errorf("query-replay: %w", err)
	}
	if st.Mode != "record" {
		return 0, fmt.Errorf("%w: QEMU's record/replay mode is %q, not record (start it with -icount shift=auto,rr=record,rrfile=LOG)", ErrBadConfig, st.Mode)
	}
	return st.ICount, nil
}
