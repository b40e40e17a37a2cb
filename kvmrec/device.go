package kvmrec

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"golang.org/x/sys/unix"
)

// devFDName is the name under which the migration pipe is passed (getfd).
const devFDName = "ckptfs-devstate"

// deviceSave is a migration of the stopped VM's device state into a pipe
// (x-ignore-shared leaves the shared RAM out).
type deviceSave struct {
	r      *recorder
	rd     *os.File
	data   chan []byte
	err    chan error
	passed bool // the write end went to the VMM under devFDName
	done   bool
}

// startDeviceSave passes a pipe to the VMM and starts `migrate` into it.
// QEMU runs the migration in its own thread while the recorder scans RAM.
func (r *recorder) startDeviceSave(ctx context.Context) (*deviceSave, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	// Only the recorder's end is non-blocking (for the poller); the
	// VMM's end stays blocking as QEMU expects of an fd: URI.
	if err := unix.SetNonblock(p[0], true); err != nil {
		unix.Close(p[0])
		unix.Close(p[1])
		return nil, fmt.Errorf("pipe: %w", err)
	}
	d := &deviceSave{r: r, rd: os.NewFile(uintptr(p[0]), "device-state"), data: make(chan []byte, 1), err: make(chan error, 1)}
	err := r.qmp.SendFD(ctx, devFDName, p[1])
	unix.Close(p[1])
	if err != nil {
		d.rd.Close()
		return nil, err
	}
	d.passed = true
	go func() {
		b, err := io.ReadAll(d.rd)
		d.rd.Close()
		if err != nil {
			d.err <- err
			return
		}
		d.data <- b
	}()
	if err := r.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + devFDName}, nil); err != nil {
		d.abort()
		return nil, err
	}
	d.passed = false // QEMU took the fd
	return d, nil
}

// wait returns the device state once the stream ended and QEMU reports the
// migration completed.
func (d *deviceSave) wait(ctx context.Context) ([]byte, error) {
	var data []byte
	select {
	case data = <-d.data:
	case err := <-d.err:
		return nil, fmt.Errorf("reading the migration stream: %w", err)
	case <-d.r.qmp.Done():
		return nil, fmt.Errorf("waiting for the migration stream: %w", d.r.qmp.Err())
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for the migration stream: %w", ctx.Err())
	}
	for delay := 100 * time.Microsecond; ; delay = min(2*delay, 20*time.Millisecond) {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := d.r.qmp.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return nil, err
		}
		switch st.Status {
		case "completed":
			d.done = true
			if len(data) == 0 {
				return nil, errors.New("the VMM completed the migration but sent no device state")
			}
			return data, nil
		case "failed", "cancelled":
			d.done = true
			return nil, fmt.Errorf("the VMM's migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
			return nil, fmt.Errorf("migration still %q: %w", st.Status, ctx.Err())
		}
	}
}

// abort cleans up after a failed or abandoned save: it cancels a running
// migration and drops an fd the VMM did not consume.
func (d *deviceSave) abort() {
	if d.done {
		return
	}
	d.done = true
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if d.passed {
		_ = d.r.qmp.CloseFD(ctx, devFDName)
	} else {
		var qe *qmp.Error
		if err := d.r.qmp.Execute(ctx, "migrate_cancel", nil, nil); err != nil && !errors.As(err, &qe) {
			d.r.cfg.Logger.Debug("migrate_cancel", "err", err)
		}
	}
	d.rd.Close()
}
