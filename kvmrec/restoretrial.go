package kvmrec

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// QEMU touches guest RAM itself when it loads a checkpoint's device state
// (on pc, the vapic option ROM's frames). A replay from <i>.ram reads those
// frames too, so they belong to W_i; which ones depends on the device state,
// so they are measured, not listed: a trial QEMU with the recording's
// machine arguments maps the live RAM file privately (so nothing it writes
// reaches the recording), loads checkpoint i's device state without running
// the guest, and the frames present in its page table afterwards are the
// ones the load touched. The working-set plugin turns fault-around off in
// the trial as well, so the set is exact at 4 KiB.

// restoreTrial runs such trials for one recording.
type restoreTrial struct {
	binary      string
	machineArgs []string // the user's machine arguments, as recorded
	ramSize     uint64
	ramPath     string // the recording's RAM file
	plugin      string // the working-set plugin
	dir         string // private scratch directory
	timeout     time.Duration
}

// trialArgs are the machine arguments with everything that would reach
// outside the trial (serial files, monitors, plugins, daemonizing) left out.
func trialArgs(machine []string) []string {
	drop := map[string]bool{"-serial": true, "-monitor": true, "-qmp": true, "-qmp-pretty": true,
		"-pidfile": true, "-plugin": true, "-incoming": true, "-parallel": true, "-debugcon": true}
	var out []string
	for k := 0; k < len(machine); k++ {
		a := machine[k]
		name := "-" + strings.TrimLeft(a, "-")
		switch {
		case drop[name]:
			k++ // and its value
		case name == "-daemonize" || name == "-S" || name == "-nographic":
		default:
			out = append(out, a)
		}
	}
	return out
}

// run measures the frames loading dev touches. The RAM file is read as it
// is when the trial maps a frame: the device state decides which frames
// are touched, not their content.
func (t *restoreTrial) run(ctx context.Context, i int, dev []byte) (_ []span, err error) {
	ctx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	base := filepath.Join(t.dir, fmt.Sprintf("trial.%d", i))
	devPath, sock, counters := base+".dev", base+".sock", base+".counters"
	defer func() {
		for _, p := range []string{devPath, sock, counters, base + ".log"} {
			os.Remove(p)
		}
	}()
	if err := os.WriteFile(devPath, dev, 0o600); err != nil {
		return nil, err
	}
	ec, err := createExecCounters(counters, t.ramSize/pageSize)
	if err != nil {
		return nil, err
	}
	ec.close()
	args := append(trialArgs(t.machineArgs),
		"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%d,mem-path=%s,share=off", t.ramSize, t.ramPath),
		"-machine", "memory-backend=ram0",
		"-icount", "shift=auto,rr=record,rrfile="+base+".log",
		"-S", "-incoming", "defer", "-global", "migration.send-configuration=off",
		"-serial", "null", "-display", "none",
		"-qmp", "unix:"+sock+",server=on,wait=off",
		"-plugin", fmt.Sprintf("%s,ram=%s,counters=%s", t.plugin, t.ramPath, counters))
	cmd := exec.Command(t.binary, args...)
	out := tailbuf.Buffer{Max: 4096}
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the restore trial: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	defer func() {
		_ = cmd.Process.Kill()
		<-exited
		if err != nil {
			err = fmt.Errorf("restore trial of checkpoint %d: %w (QEMU said: %s)", i, err, out.LastLine())
		}
	}()
	c, err := qmp.DialStarting(ctx, sock, exited)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Execute(ctx, "migrate-incoming", map[string]any{"uri": "exec:cat " + devPath}, nil); err != nil {
		return nil, err
	}
	for {
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := c.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return nil, err
		}
		if st.Status == "completed" {
			break
		}
		if st.Status == "failed" || st.Status == "cancelled" {
			return nil, fmt.Errorf("loading the device state %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-time.After(5 * time.Millisecond):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	m, err := mappingOf(cmd.Process.Pid, t.ramPath, false)
	if err != nil {
		return nil, err
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", cmd.Process.Pid))
	if err != nil {
		return nil, err
	}
	defer pm.Close()
	var buf []byte
	return presentFrames(pm, m, &buf)
}
