package kvmrec

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

func startQEMU(t testing.TB, ctx context.Context) (*qemuguest.Guest, qemuguest.Artifacts, string, string) {
	t.Helper()
	testenv.RequireQEMU(t)
	art, err := qemuguest.Build("")
	if err != nil {
		t.Fatal(err)
	}
	dir := shmDir(t)
	serial := filepath.Join(dir, "serial")
	g, err := qemuguest.Start(ctx, qemuguest.Config{Kernel: art.Kernel, Initrd: art.Initrd, MemMiB: 256,
		MemPath: filepath.Join(dir, "ram"), Share: true, QMPSocket: filepath.Join(dir, "qmp.sock"), SerialPath: serial})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Stop() })
	if _, err := qemuguest.WaitTicks(ctx, serial, 2); err != nil {
		t.Fatalf("guest did not boot: %v\n%s", err, g.Output())
	}
	return g, art, dir, serial
}

// TestRecordQEMU records the real test guest (TCG) with device state, checks
// what the store holds, and restores two checkpoints into fresh QEMUs that
// must continue the guest's tick counter instead of booting.
func TestRecordQEMU(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	g, art, dir, serial := startQEMU(t, ctx)
	st := openStore(t, "")
	defer st.Close()

	var mu sync.Mutex
	var stats []CheckpointStats
	var ticks []int
	const count = 6
	sum, err := Record(ctx, st, Config{Run: "q", QMPSocket: g.Cfg.QMPSocket, MemPath: g.Cfg.MemPath,
		Interval: 400 * time.Millisecond, Count: count, DeviceState: true, Logger: quietLogger(),
		OnCheckpoint: func(cs CheckpointStats) {
			last, _ := qemuguest.LastTick(serial)
			mu.Lock()
			stats = append(stats, cs)
			ticks = append(ticks, last)
			mu.Unlock()
		}})
	if err != nil {
		t.Fatal(err)
	}
	if sum.Checkpoints != count {
		t.Fatalf("summary %+v", sum)
	}
	ri, err := st.Run("q")
	if err != nil || ri.Checkpoints != count || ri.Intervals != count-1 || ri.RAMSize != 256<<20 {
		t.Fatalf("run %+v %v", ri, err)
	}
	for i, cs := range stats {
		dev, err := st.DeviceState("q", i)
		if err != nil || len(dev) < 1000 || !bytes.HasPrefix(dev, []byte("QEVM")) {
			t.Errorf("checkpoint %d: device state of %d bytes (%v), want a QEMU migration stream", i, len(dev), err)
		}
		if i > 0 {
			ws, err := st.WorkingSet("q", i-1)
			if err != nil || ws.IsEmpty() {
				t.Errorf("W_%d empty (%v)", i-1, err)
			}
			if cs.ChangedFrames == 0 {
				t.Errorf("checkpoint %d: nothing changed in a guest that rewrites 4 MiB per tick", i)
			}
		}
		t.Logf("checkpoint %d: downtime %v (stop %v pagemap %v scan %v pageout %v device %v cont %v), W %d frames, changed %d, device state %d bytes, tick %d",
			i, cs.Downtime.Round(time.Microsecond), cs.Phases.Stop.Round(time.Microsecond), cs.Phases.Pagemap.Round(time.Microsecond),
			cs.Phases.Scan.Round(time.Microsecond), cs.Phases.Pageout.Round(time.Microsecond), cs.Phases.Device.Round(time.Microsecond),
			cs.Phases.Cont.Round(time.Microsecond), cs.Present, cs.ChangedFrames, cs.DeviceStateBytes, ticks[i])
	}
	// The VM runs on after the recording.
	last, _ := qemuguest.LastTick(serial)
	if _, err := qemuguest.WaitTicks(ctx, serial, last+2); err != nil {
		t.Fatalf("guest stopped ticking after the recording: %v", err)
	}
	// Before pause 0 the guest had printed tick 2, so a restored guest
	// prints 3 or more; OnCheckpoint(i) runs after pause i, so it cannot
	// print much more than the tick read there.
	for _, i := range []int{2, count - 1} {
		restoreCheckpoint(t, ctx, st, art, dir, "q", i, 2, ticks[i])
	}
}

// restoreCheckpoint writes full checkpoint i of run to a file, restores it
// into a new QEMU (share=off, -incoming defer, x-ignore-shared, device state
// by fd) and checks that the guest counts on from between lo and hi.
func restoreCheckpoint(t *testing.T, ctx context.Context, st *index.Store, art qemuguest.Artifacts, dir, run string, i, lo, hi int) {
	t.Helper()
	img := filepath.Join(dir, "restore.ram")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := st.OpenCheckpoint(run, i)
	if err != nil {
		t.Fatal(err)
	}
	_ = f.Truncate(int64(cp.Size()))
	buf := make([]byte, 1<<20)
	for off := uint64(0); off < cp.Size(); off += uint64(len(buf)) {
		if err := cp.ReadFrames(off/pageSize, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteAt(buf, int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	cp.Close()
	f.Close()
	dev, err := st.DeviceState(run, i)
	if err != nil {
		t.Fatal(err)
	}
	devPath := filepath.Join(dir, "restore.dev")
	if err := os.WriteFile(devPath, dev, 0o600); err != nil {
		t.Fatal(err)
	}
	serial := filepath.Join(dir, "restore.serial")
	_ = os.Remove(serial)
	g, err := qemuguest.Start(ctx, qemuguest.Config{Kernel: art.Kernel, Initrd: art.Initrd, MemMiB: 256,
		MemPath: img, Share: false, Incoming: true, QMPSocket: filepath.Join(dir, "restore.sock"), SerialPath: serial})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Stop()
	c, err := qmp.Dial(ctx, g.Cfg.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	df, err := os.Open(devPath)
	if err != nil {
		t.Fatal(err)
	}
	defer df.Close()
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if err := c.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.SendFD(ctx, "in", int(df.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "migrate-incoming", map[string]string{"uri": "fd:in"}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		var m struct {
			Status string `json:"status"`
		}
		if err := c.Execute(ctx, "query-migrate", nil, &m); err != nil {
			t.Fatal(err)
		}
		if m.Status == "completed" {
			break
		}
		if m.Status == "failed" {
			t.Fatalf("incoming migration failed: %s", g.Output())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := c.Execute(ctx, "cont", nil, nil); err != nil {
		t.Fatal(err)
	}
	first, err := qemuguest.WaitTicks(ctx, serial, 1)
	if err != nil {
		t.Fatalf("restored guest does not tick: %v\n%s", err, g.Output())
	}
	out, _ := os.ReadFile(serial)
	if strings.Contains(string(out), "ckptfs-init") {
		t.Fatalf("checkpoint %d: the restored guest booted again:\n%s", i, out)
	}
	ticks, _ := qemuguest.Ticks(serial)
	first = ticks[0]
	if first <= lo || first > hi+2 {
		t.Fatalf("checkpoint %d: restored guest starts at tick %d, want within (%d, %d]", i, first, lo, hi+2)
	}
	t.Logf("checkpoint %d restored: the guest continues at tick %d (the recorded guest showed %d after that checkpoint's commit)", i, first, hi)
}
