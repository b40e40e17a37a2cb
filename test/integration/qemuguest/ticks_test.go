package qemuguest

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestTicks(t *testing.T) {
	p := filepath.Join(t.TempDir(), "serial.log")
	log := strings.Join([]string{
		"[    0.000000] Linux version 6.1.0",
		"ckptfs-init data_mib=4 period_us=100000",
		"ckptfs-tick 1\r",
		"ckptfs-tick 2\r",
		"[   3.1] random: crng init doneckptfs-tick 3\r",
		"ck 4\r", // tail of a line whose start went to another log
		"ckptfs-tick 10\r",
		"ckptfs-tick 1", // still being written: "ckptfs-tick 11"
	}, "\n")
	if err := os.WriteFile(p, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Ticks(p)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{1, 2, 3, 10}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Ticks = %v, want %v", got, want)
	}
	if last, _ := LastTick(p); last != 10 {
		t.Fatalf("LastTick = %d, want 10", last)
	}
	if _, err := Ticks(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("Ticks of a missing file: no error")
	}
}

func TestArgsFor(t *testing.T) {
	a := strings.Join(ArgsFor(Config{
		Kernel: "/k", Initrd: "/i", MemPath: "/m", Share: true,
		QMPSocket: "/q", SerialPath: "/s", Incoming: true, ExtraArgs: []string{"-S"},
	}), " ")
	for _, want := range []string{
		"-machine pc,accel=tcg", "-m 256M",
		"-object memory-backend-file,id=ram0,size=256M,mem-path=/m,share=on",
		"-machine memory-backend=ram0", "-nodefaults", "-no-user-config", "-display none",
		"-kernel /k", "-initrd /i", "-append console=ttyS0", "-serial file:/s",
		"-qmp unix:/q,server=on,wait=off", "-incoming defer", "-S",
	} {
		if !strings.Contains(a, want) {
			t.Errorf("ArgsFor lacks %q: %s", want, a)
		}
	}
	b := strings.Join(ArgsFor(Config{MemPath: "/m", MemMiB: 64}), " ")
	if !strings.Contains(b, "size=64M,mem-path=/m,share=off") || strings.Contains(b, "-incoming") {
		t.Errorf("ArgsFor share=off: %s", b)
	}
}
