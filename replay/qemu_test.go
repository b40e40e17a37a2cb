package replay_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/replay"
	"github.com/ckptfs/ckptfs/replay/replaytest"
)

// recordedArgs is what a recording's QEMU ran with (qemuguest.ArgsFor).
var recordedArgs = []string{
	"-machine", "pc,accel=tcg", "-m", "4M",
	"-object", "memory-backend-file,id=ram0,size=4M,mem-path=/rec/ram,share=on",
	"-machine", "memory-backend=ram0", "-nodefaults", "-no-user-config", "-display", "none",
	"-no-reboot", "-kernel", "/g/vmlinuz", "-initrd", "/g/initramfs.gz",
	"-append", "console=ttyS0 panic=-1", "-serial", "file:/rec/serial",
	"-qmp", "unix:/rec/qmp,server=on,wait=off",
}

func TestQEMUArgs(t *testing.T) {
	cfg := replay.QEMUConfig{
		Mount: "/mnt/ck", Run: "r", Interval: 7, RAMSize: 4 << 20,
		RecordedArgs: recordedArgs, QMPSocket: "/tmp/x/qmp.sock", SerialPath: "/tmp/x/serial",
		Args: []string{"-d", "guest_errors"},
	}
	got := replay.QEMUArgs(cfg)
	line := strings.Join(got, " ")
	t.Log(line)
	for _, want := range []string{
		// accel= dropped from the machine, recorded RAM backend and -m dropped
		"-machine pc -machine memory-backend=ram0 -nodefaults",
		"-append console=ttyS0 panic=-1 -serial file:/tmp/x/serial",
		"-accel tcg -m 4M -object memory-backend-file,id=ram0,size=4194304,mem-path=/mnt/ck/r/full/7.ram,share=off",
		"-qmp unix:/tmp/x/qmp.sock,server=on,wait=off",
		"-S -incoming defer -d guest_errors", // the pass-through comes last
	} {
		if !strings.Contains(line, want) {
			t.Errorf("missing %q", want)
		}
	}
	for _, bad := range []string{"share=on", "/rec/", "accel=tcg"} {
		if strings.Contains(line, bad) {
			t.Errorf("contains %q", bad)
		}
	}
	if n := strings.Count(line, "-m "); n != 1 {
		t.Errorf("%d -m options", n)
	}
	if n := strings.Count(line, "-display"); n != 1 {
		t.Errorf("%d -display options", n)
	}
	if !slices.Contains(got, "console=ttyS0 panic=-1") {
		t.Errorf("-append value split")
	}

	// Sparse maps <I>.ram; no serial path: the recorded port goes to null;
	// KVM; no recorded arguments: the replay names its backend itself.
	cfg.Sparse, cfg.SerialPath, cfg.Accel = true, "", "kvm"
	line = strings.Join(replay.QEMUArgs(cfg), " ")
	for _, want := range []string{"mem-path=/mnt/ck/r/7.ram,share=off", "-serial null", "-accel kvm"} {
		if !strings.Contains(line, want) {
			t.Errorf("sparse: missing %q in %s", want, line)
		}
	}
	cfg.RecordedArgs, cfg.SerialPath, cfg.Accel = nil, "/s", ""
	cfg.Args = []string{"-machine", "pc-i440fx-7.2,accel=tcg"}
	line = strings.Join(replay.QEMUArgs(cfg), " ")
	t.Log(line)
	for _, want := range []string{"id=ram0,", "-machine memory-backend=ram0", "-serial file:/s", "-display none"} {
		if !strings.Contains(line, want) {
			t.Errorf("no recorded args: missing %q in %s", want, line)
		}
	}
	if strings.Contains(line, "-accel") {
		t.Errorf("-accel added although the arguments choose one: %s", line)
	}
}

// TestResolveQEMUErrors checks the clear errors before QEMU starts.
func TestResolveQEMUErrors(t *testing.T) {
	mount := t.TempDir()
	recJSON, _ := json.Marshal(recordedArgs)
	if _, err := replaytest.WriteRun(mount, "r", replaytest.Config{RAMSize: 4 << 20, Intervals: 1,
		DeviceState: []byte("QEVM"), Meta: map[string]string{replay.MetaQEMUArgs: string(recJSON)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := replaytest.WriteRun(mount, "nodev", replaytest.Config{RAMSize: 4 << 20, Intervals: 1}); err != nil {
		t.Fatal(err)
	}
	ok := replay.QEMUConfig{Mount: mount, Run: "r", Interval: 0}
	cfg, err := replay.ResolveQEMU(ok)
	if errors.Is(err, replay.ErrNoQEMU) {
		t.Logf("no QEMU here: %v", err)
	} else if err != nil {
		t.Fatal(err)
	} else if cfg.RAMSize != 4<<20 || !slices.Equal(cfg.RecordedArgs, recordedArgs) || !filepath.IsAbs(cfg.QEMU) {
		t.Errorf("resolved %+v", cfg)
	}

	with := func(f func(*replay.QEMUConfig)) replay.QEMUConfig { c := ok; f(&c); return c }
	cases := []struct {
		name string
		cfg  replay.QEMUConfig
		want error
	}{
		{"no run", with(func(c *replay.QEMUConfig) { c.Run = "none" }), replay.ErrRunNotFound},
		{"no checkpoint", with(func(c *replay.QEMUConfig) { c.Interval = 9 }), replay.ErrNoCheckpoint},
		// Checkpoint 1 is the last one: its interval has no working set.
		{"sparse without ws", with(func(c *replay.QEMUConfig) { c.Interval, c.Sparse = 1, true }), replay.ErrNoWorkingSet},
		{"missing dev", with(func(c *replay.QEMUConfig) { c.Run = "nodev" }), replay.ErrNoDeviceState},
		{"missing qemu", with(func(c *replay.QEMUConfig) { c.QEMU = "/nonexistent/qemu-system-x86_64" }), replay.ErrNoQEMU},
		{"qemu not in path", with(func(c *replay.QEMUConfig) { c.QEMU = "qemu-system-none-such" }), replay.ErrNoQEMU},
		{"-m mismatch", with(func(c *replay.QEMUConfig) { c.Args = []string{"-m", "512M"} }), replay.ErrRAMSizeMismatch},
		{"RAMSize mismatch", with(func(c *replay.QEMUConfig) { c.RAMSize = 8 << 20 }), replay.ErrRAMSizeMismatch},
		{"bad accel", with(func(c *replay.QEMUConfig) { c.Accel = "hvf" }), replay.ErrBadConfig},
		{"two accels", with(func(c *replay.QEMUConfig) { c.Accel = "tcg"; c.Args = []string{"-accel", "tcg"} }), replay.ErrBadConfig},
	}
	if _, err := os.Stat("/dev/kvm"); err != nil {
		cases = append(cases, struct {
			name string
			cfg  replay.QEMUConfig
			want error
		}{"kvm without /dev/kvm", with(func(c *replay.QEMUConfig) { c.Accel = "kvm" }), replay.ErrBadConfig})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := replay.QEMU(context.Background(), c.cfg)
			if !errors.Is(err, c.want) {
				t.Fatalf("err = %v, want %v", err, c.want)
			}
			t.Log(err)
		})
	}

	// A sparse file of the wrong size is a RAM size mismatch.
	if err := os.Truncate(filepath.Join(mount, "r", "0.ram"), 1<<20); err != nil {
		t.Fatal(err)
	}
	_, err = replay.QEMU(context.Background(), with(func(c *replay.QEMUConfig) { c.Sparse = true }))
	if !errors.Is(err, replay.ErrRAMSizeMismatch) {
		t.Fatalf("short 0.ram: %v", err)
	}
}
