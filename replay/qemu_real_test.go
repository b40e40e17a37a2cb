package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/replay"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// TestQEMURealGuest records one checkpoint of the QEMU test guest by hand
// (stop, device state with x-ignore-shared, a copy of the share=on RAM file)
// into a directory with the mount's layout, and replays it with replay.QEMU:
// the replayed guest counts on from the checkpoint's tick. Both ways of
// passing the device state are used; the mount path has a space in it.
func TestQEMURealGuest(t *testing.T) {
	testenv.RequireQEMU(t)
	if testing.Short() {
		t.Skip("boots a TCG guest (-short)")
	}
	art, err := qemuguest.Build("")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	src := qemuguest.Config{Kernel: art.Kernel, Initrd: art.Initrd,
		MemPath: filepath.Join(dir, "src.ram"), Share: true,
		QMPSocket: filepath.Join(dir, "src.qmp"), SerialPath: filepath.Join(dir, "src.serial")}
	g, err := qemuguest.Start(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Kill() })
	if _, err := qemuguest.WaitTicks(ctx, src.SerialPath, 3); err != nil {
		t.Fatalf("%v\n%s", err, g.Output())
	}

	mount := filepath.Join(dir, "mnt dir")
	run := filepath.Join(mount, "q")
	if err := os.MkdirAll(filepath.Join(run, "full"), 0o755); err != nil {
		t.Fatal(err)
	}
	q, err := qmp.Dial(ctx, src.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if err := q.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}}}
	if err := q.Execute(ctx, "migrate-set-capabilities", caps, nil); err != nil {
		t.Fatal(err)
	}
	dev, err := os.Create(filepath.Join(run, "0.dev"))
	if err != nil {
		t.Fatal(err)
	}
	if err := q.SendFD(ctx, "dev", int(dev.Fd())); err != nil {
		t.Fatal(err)
	}
	if err := q.Execute(ctx, "migrate", map[string]string{"uri": "fd:dev"}, nil); err != nil {
		t.Fatal(err)
	}
	for {
		var mi struct{ Status string }
		if err := q.Execute(ctx, "query-migrate", nil, &mi); err != nil {
			t.Fatal(err)
		}
		if mi.Status == "completed" {
			break
		}
		if mi.Status == "failed" {
			t.Fatalf("saving device state failed: %s", g.Output())
		}
		time.Sleep(2 * time.Millisecond)
	}
	dev.Close()
	tick, err := qemuguest.LastTick(src.SerialPath)
	if err != nil || tick == 0 {
		t.Fatalf("no tick before the checkpoint: %v", err)
	}
	if err := qemuguest.CopySparse(src.MemPath, filepath.Join(run, "full", "0.ram")); err != nil {
		t.Fatal(err)
	}
	g.Kill()

	recArgs, _ := json.Marshal(qemuguest.ArgsFor(src))
	info := index.RunInfo{RunRecord: index.RunRecord{Name: "q", RAMSize: qemuguest.DefaultMemMiB << 20, PageSize: 4096,
		Meta: map[string]string{replay.MetaQEMUArgs: string(recArgs)}}, Checkpoints: 1}
	data, _ := json.Marshal(info)
	if err := os.WriteFile(filepath.Join(run, "run.json"), data, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, viaExec := range []bool{false, true} {
		serial := filepath.Join(dir, "replay.serial")
		os.Remove(serial)
		r, err := replay.QEMU(ctx, replay.QEMUConfig{Mount: mount, Run: "q", Interval: 0,
			SerialPath: serial, DevViaExec: viaExec})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := qemuguest.WaitTicks(ctx, serial, tick+3); err != nil {
			log, _ := os.ReadFile(serial)
			t.Fatalf("exec %v: %v\nserial:\n%s\nqemu: %s", viaExec, err, log, r.Output())
		}
		ticks, _ := qemuguest.Ticks(serial)
		if ticks[0] <= tick || ticks[0] > tick+2 {
			t.Errorf("replayed guest starts at tick %d, checkpoint at %d", ticks[0], tick)
		}
		log, _ := os.ReadFile(serial)
		if bytes.Contains(log, []byte("ckptfs-init")) {
			t.Errorf("replayed guest booted again")
		}
		t.Logf("exec %v: checkpoint tick %d, replay ticks %v; QMP up %v, migration %v, running %v after exec",
			viaExec, tick, ticks, r.Started.Round(time.Millisecond), r.Migration.Round(time.Millisecond),
			r.Ready.Round(time.Millisecond))
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-r.Done():
		default:
			t.Fatal("QEMU still running after Stop")
		}
	}
}
