package qemuguest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestRestoreFromCopiedRAM proves the restore mechanism of DESIGN.md on the
// installed QEMU: a checkpoint is a copy of the share=on RAM file taken while
// the VM is stopped plus a migration stream saved with x-ignore-shared; a new
// QEMU with mem-path=<copy>,share=off, -incoming defer and x-ignore-shared
// continues the guest where the checkpoint left it. Findings are logged with
// "FINDING" and written down in doc.go.
func TestRestoreFromCopiedRAM(t *testing.T) {
	testenv.RequireQEMU(t)
	art, err := Build("")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	dir := t.TempDir()
	base := Config{Kernel: art.Kernel, Initrd: art.Initrd, MemMiB: DefaultMemMiB}

	src := base
	src.MemPath = filepath.Join(dir, "src.ram")
	src.Share = true
	src.QMPSocket = filepath.Join(dir, "src.qmp")
	src.SerialPath = filepath.Join(dir, "src.serial")
	t0 := time.Now()
	g, err := Start(ctx, src)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Kill() })
	t.Logf("source: %s", strings.Join(g.Args, " "))
	qmpUp := time.Since(t0)
	if _, err := WaitTicks(ctx, src.SerialPath, 1); err != nil {
		t.Fatalf("%v\nqemu: %s", err, g.Output())
	}
	t.Logf("FINDING boot: QMP socket up after %v, first tick after %v", qmpUp.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	if _, err := WaitTicks(ctx, src.SerialPath, 8); err != nil {
		t.Fatal(err)
	}

	q, err := dialQMP(src.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()

	// Checkpoint A: device state through exec:.
	ckA := takeCheckpoint(t, q, src, dir, "A", false)
	// The source goes on after a checkpoint (cont from "postmigrate").
	if _, err := q.exec("cont", nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := q.status(); st != "running" {
		t.Fatalf("source status after cont: %q", st)
	}
	if _, err := WaitTicks(ctx, src.SerialPath, ckA.lastTick+4); err != nil {
		t.Fatalf("source did not continue after checkpoint A: %v", err)
	}
	// Checkpoint B from the same process: device state through an fd (getfd).
	ckB := takeCheckpoint(t, q, src, dir, "B", true)
	if ckB.lastTick <= ckA.lastTick {
		t.Fatalf("checkpoint B tick %d <= A tick %d", ckB.lastTick, ckA.lastTick)
	}
	// Checkpoint C: exec: again, to tell the cost of exec: from that of the
	// first migration of a process.
	if _, err := q.exec("cont", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := WaitTicks(ctx, src.SerialPath, ckB.lastTick+2); err != nil {
		t.Fatal(err)
	}
	takeCheckpoint(t, q, src, dir, "C", false)
	if hmp, err := q.exec("human-monitor-command", map[string]any{"command-line": "info ramblock"}); err == nil {
		var text string
		_ = json.Unmarshal(hmp, &text)
		t.Logf("FINDING RAM blocks (ram0 is skipped by x-ignore-shared, the others are in the stream):\n%s", text)
	}
	if _, err := q.exec("quit", nil); err != nil && !strings.Contains(err.Error(), "EOF") {
		t.Logf("quit: %v", err)
	}
	q.Close()
	if err := waitGuest(g, 10*time.Second); err != nil {
		t.Fatalf("source did not quit: %v", err)
	}

	t.Run("restore-exec", func(t *testing.T) {
		sum := fileSHA(t, ckA.ram)
		r := restore(ctx, t, base, dir, ckA, restoreOpts{name: "rA"})
		if r.migErr != nil {
			t.Fatalf("incoming migration: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		r.checkContinues(ctx, t, ckA)
		// How QEMU 7.2 holds mem-path with share=off.
		flags, perms := memPathUse(t, r.g.Pid(), ckA.ram)
		t.Logf("FINDING mem-path share=off: open flags %s, mapping %s", flags, perms)
		if !strings.HasPrefix(perms, "rw") || !strings.HasSuffix(perms, "p") {
			t.Errorf("mapping of mem-path is %q, want private writable (rw-p)", perms)
		}
		r.g.Kill()
		if sum2 := fileSHA(t, ckA.ram); sum2 != sum {
			t.Errorf("restored guest changed its share=off mem-path file")
		}
	})

	t.Run("restore-fd", func(t *testing.T) {
		r := restore(ctx, t, base, dir, ckB, restoreOpts{name: "rB", viaFD: true})
		if r.migErr != nil {
			t.Fatalf("incoming migration: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		r.checkContinues(ctx, t, ckB)
	})

	// The same checkpoint can be restored more than once, and the device
	// state of one checkpoint does not fit the RAM of another.
	t.Run("restore-again", func(t *testing.T) {
		r := restore(ctx, t, base, dir, ckB, restoreOpts{name: "rB2"})
		if r.migErr != nil {
			t.Fatalf("incoming migration: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		r.checkContinues(ctx, t, ckB)

		// x-ignore-shared skips only share=on blocks: this share=off QEMU
		// puts all of ram0 into its stream.
		out := filepath.Join(dir, "rB2-out.dev")
		f, err := os.Create(out)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := r.q.setIgnoreShared(true); err != nil {
			t.Fatal(err)
		}
		if _, err := r.q.execFD("getfd", map[string]any{"fdname": "out"}, int(f.Fd())); err != nil {
			t.Fatal(err)
		}
		if _, err := r.q.exec("stop", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := r.q.exec("migrate", map[string]any{"uri": "fd:out"}); err != nil {
			t.Fatal(err)
		}
		mi, err := r.q.waitMigration(30 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		fi, _ := f.Stat()
		if fi.Size() < 4*ckB.devSize {
			t.Errorf("share=off QEMU with x-ignore-shared: stream %d bytes, want ram0 in it", fi.Size())
		}
		t.Logf("FINDING a share=off QEMU migrates with x-ignore-shared into a %d-byte stream (ram transferred %d, normal pages %d): x-ignore-shared needs share=on on the saving side",
			fi.Size(), mi.RAM.Transferred, mi.RAM.Normal)
	})

	// share=on on the restoring side restores too, but the guest then
	// writes into the checkpoint file: share=off keeps checkpoints intact.
	t.Run("dest-share-on-writes-file", func(t *testing.T) {
		cp := filepath.Join(dir, "B-shared.ram")
		if err := CopySparse(ckB.ram, cp); err != nil {
			t.Fatal(err)
		}
		sum := fileSHA(t, cp)
		r := restore(ctx, t, base, dir, ckB, restoreOpts{name: "rBs", ram: cp, share: true})
		if r.migErr != nil {
			t.Fatalf("incoming migration: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		r.checkContinues(ctx, t, ckB)
		r.g.Kill()
		if fileSHA(t, cp) == sum {
			t.Errorf("share=on restore left its mem-path file unchanged")
		}
		t.Logf("FINDING share=on on the restoring side restores as well, and writes the guest's changes into mem-path")
	})

	// readonly=on makes QEMU open mem-path O_RDONLY and map it PROT_READ;
	// the restore completes, but guest writes to RAM are dropped and the
	// guest makes no progress: it is no way to restore from a read-only file.
	t.Run("readonly-on-is-useless", func(t *testing.T) {
		r := restore(ctx, t, base, dir, ckA, restoreOpts{name: "roon", readOnly: true})
		if r.migErr != nil {
			t.Fatalf("incoming migration with readonly=on: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		flags, perms := memPathUse(t, r.g.Pid(), ckA.ram)
		if flags != "O_RDONLY" || !strings.HasPrefix(perms, "r-") {
			t.Errorf("readonly=on: mem-path open %s, mapped %s; want O_RDONLY, r--p", flags, perms)
		}
		if _, err := r.q.exec("cont", nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		ticks, _ := Ticks(r.serial)
		if len(ticks) > 1 {
			t.Fatalf("readonly=on: the guest progresses: ticks %v", ticks)
		}
		st, _ := r.q.status()
		t.Logf("FINDING readonly=on,share=off: open %s, mapped %s, restore completes, status %q, but ticks after 2 s: %v (guest RAM writes are dropped)",
			flags, perms, st, ticks)
	})

	t.Run("requires-ignore-shared-on-dest", func(t *testing.T) {
		r := restore(ctx, t, base, dir, ckA, restoreOpts{name: "noign", noIgnoreShared: true})
		if r.migErr == nil {
			t.Fatalf("incoming migration without x-ignore-shared succeeded")
		}
		t.Logf("FINDING without x-ignore-shared on the incoming side: %v; %s", r.migErr, strings.TrimSpace(r.g.Output()))
	})

	t.Run("requires-same-mem-size", func(t *testing.T) {
		// A different -m needs a different file; QEMU creates it.
		r := restore(ctx, t, base, dir, ckA, restoreOpts{name: "mem512", memMiB: 512,
			ram: filepath.Join(dir, "mem512.ram")})
		if r.migErr == nil {
			t.Fatalf("incoming migration with -m 512M succeeded")
		}
		t.Logf("FINDING -m 512M instead of 256M: %v; %s", r.migErr, strings.TrimSpace(r.g.Output()))
	})

	// The kernel and initrd live in guest RAM after boot (the linuxboot
	// option ROM comes through fw_cfg, not as a RAM block of its own), so
	// a restore does not need -kernel/-initrd/-append.
	t.Run("no-kernel-args-needed", func(t *testing.T) {
		r := restore(ctx, t, base, dir, ckA, restoreOpts{name: "nokernel", noKernel: true})
		if r.migErr != nil {
			t.Fatalf("incoming migration without -kernel/-initrd: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		r.checkContinues(ctx, t, ckA)
		t.Logf("FINDING without -kernel/-initrd/-append the restore works")
	})

	// A mode 0444 file: root passes (CAP_DAC_OVERRIDE), as QEMU 7.2 opens
	// mem-path O_RDWR even with share=off; an unprivileged QEMU fails.
	t.Run("readonly-0444", func(t *testing.T) {
		testenv.RequireRoot(t, "to compare root and an unprivileged user")
		rodir, err := os.MkdirTemp("", "ckptfs-ro-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(rodir)
		if err := os.Chmod(rodir, 0o777); err != nil {
			t.Fatal(err)
		}
		ro := filepath.Join(rodir, "ro.ram")
		if err := CopySparse(ckA.ram, ro); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(ro, 0o444); err != nil {
			t.Fatal(err)
		}
		if !canAccess(art.Kernel, 65534) || !canAccess(art.Initrd, 65534) {
			t.Skipf("kernel/initrd in %s not readable by uid 65534", art.Dir)
		}

		r := restore(ctx, t, base, rodir, ckA, restoreOpts{name: "ro-root", ram: ro})
		if r.migErr != nil {
			t.Fatalf("root, 0444 mem-path: %v\nqemu: %s", r.migErr, r.g.Output())
		}
		r.checkContinues(ctx, t, ckA)
		r.g.Kill()
		t.Logf("FINDING 0444 mem-path, share=off, QEMU as root: accepted and restores")

		nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
		cfg := base
		cfg.MemPath = ro
		cfg.QMPSocket = filepath.Join(rodir, "nobody.qmp")
		cfg.SerialPath = filepath.Join(rodir, "nobody.serial")
		cfg.Incoming = true
		cfg.Cred = nobody
		cfg.StartWait = 15 * time.Second
		g, err := Start(ctx, cfg)
		if err == nil {
			g.Kill()
			t.Fatalf("0444 mem-path as uid 65534: QEMU started")
		}
		if !strings.Contains(err.Error(), "Permission denied") {
			t.Fatalf("0444 mem-path as uid 65534: %v", err)
		}
		t.Logf("FINDING 0444 mem-path, share=off, QEMU as uid 65534: refused: %s", lastLine(err.Error()))

		// readonly=on opens O_RDONLY and maps PROT_READ, and the guest
		// cannot write its RAM: QEMU starts, but it is no way to restore.
		cfg.ReadOnly = true
		cfg.QMPSocket = filepath.Join(rodir, "nobody-ro.qmp")
		g, err = Start(ctx, cfg)
		if err != nil {
			t.Logf("FINDING 0444 mem-path, share=off,readonly=on as uid 65534: %s", lastLine(err.Error()))
		} else {
			t.Logf("FINDING 0444 mem-path, share=off,readonly=on as uid 65534: QEMU starts")
			g.Kill()
		}
	})
}

// checkpoint is one saved checkpoint: a RAM copy and a device-state stream.
type checkpoint struct {
	ram, dev string
	lastTick int
	devSize  int64
}

// takeCheckpoint stops the source, saves the device state with
// x-ignore-shared (through exec: or a getfd fd), copies the RAM file, and
// leaves the VM stopped.
func takeCheckpoint(t *testing.T, q *qmp, src Config, dir, name string, viaFD bool) checkpoint {
	t.Helper()
	ck := checkpoint{
		ram: filepath.Join(dir, name+".ram"),
		dev: filepath.Join(dir, name+".dev"),
	}
	if err := q.setIgnoreShared(true); err != nil {
		t.Fatal(err)
	}
	var f *os.File
	uri := "exec:cat > " + ck.dev
	if viaFD {
		var err error
		f, err = os.OpenFile(ck.dev, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := q.execFD("getfd", map[string]any{"fdname": "ckpt" + name}, int(f.Fd())); err != nil {
			t.Fatal(err)
		}
		uri = "fd:ckpt" + name
	}

	tStop := time.Now()
	if _, err := q.exec("stop", nil); err != nil {
		t.Fatal(err)
	}
	stopped := time.Since(tStop)
	tMig := time.Now()
	if _, err := q.exec("migrate", map[string]any{"uri": uri}); err != nil {
		t.Fatal(err)
	}
	mi, err := q.waitMigration(20 * time.Second)
	if err != nil {
		t.Fatalf("save %s: %v", name, err)
	}
	saveTotal, migTime := time.Since(tStop), time.Since(tMig)
	st, _ := q.status()
	if st != "postmigrate" {
		t.Errorf("source status after migrate: %q, want postmigrate", st)
	}
	tCopy := time.Now()
	if err := CopySparse(src.MemPath, ck.ram); err != nil {
		t.Fatal(err)
	}
	copyTime := time.Since(tCopy)
	if f != nil {
		f.Close()
	}
	fi, err := os.Stat(ck.dev)
	if err != nil {
		t.Fatal(err)
	}
	ck.devSize = fi.Size()
	ck.lastTick, err = LastTick(src.SerialPath)
	if err != nil || ck.lastTick == 0 {
		t.Fatalf("no tick in source serial log: %v", err)
	}
	var ramTransferred int64
	if mi.RAM != nil {
		ramTransferred = mi.RAM.Transferred
	}
	via := "exec:cat"
	if viaFD {
		via = "fd (getfd)"
	}
	t.Logf("FINDING checkpoint %s via %s: tick %d, device state %d bytes (ram transferred %d), stop %v, migrate→completed %v, stop→completed %v (QEMU total-time %d ms, downtime %d ms), RAM copy %v, then status %q",
		name, via, ck.lastTick, ck.devSize, ramTransferred, stopped.Round(time.Microsecond),
		migTime.Round(time.Microsecond), saveTotal.Round(time.Microsecond), mi.TotalTime, mi.Downtime,
		copyTime.Round(time.Millisecond), st)
	return ck
}

type restoreOpts struct {
	name           string
	ram            string // default: the checkpoint's RAM copy
	viaFD          bool
	noIgnoreShared bool
	memMiB         int
	noKernel       bool
	readOnly       bool
	share          bool
}

type restored struct {
	g      *Guest
	q      *qmp
	serial string
	migErr error
}

// restore starts an incoming QEMU on a checkpoint and runs the incoming
// migration. A start failure is fatal; a migration failure is returned.
func restore(ctx context.Context, t *testing.T, base Config, dir string, ck checkpoint, o restoreOpts) *restored {
	t.Helper()
	cfg := base
	cfg.MemPath = ck.ram
	if o.ram != "" {
		cfg.MemPath = o.ram
	}
	if o.memMiB != 0 {
		cfg.MemMiB = o.memMiB
	}
	if o.noKernel {
		cfg.Kernel, cfg.Initrd = "", ""
	}
	cfg.Share = o.share
	cfg.ReadOnly = o.readOnly
	cfg.Incoming = true
	cfg.QMPSocket = filepath.Join(dir, o.name+".qmp")
	cfg.SerialPath = filepath.Join(dir, o.name+".serial")
	g, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Kill() })
	t.Logf("restore: %s", strings.Join(g.Args, " "))
	q, err := dialQMP(cfg.QMPSocket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { q.Close() })
	r := &restored{g: g, q: q, serial: cfg.SerialPath}
	if st, _ := q.status(); st != "inmigrate" {
		t.Errorf("status before migrate-incoming: %q, want inmigrate", st)
	}
	if !o.noIgnoreShared {
		if err := q.setIgnoreShared(true); err != nil {
			t.Fatal(err)
		}
	}
	uri := "exec:cat " + ck.dev
	if o.viaFD {
		f, err := os.Open(ck.dev)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := q.execFD("getfd", map[string]any{"fdname": "in"}, int(f.Fd())); err != nil {
			t.Fatal(err)
		}
		uri = "fd:in"
	}
	tIn := time.Now()
	if _, err := q.exec("migrate-incoming", map[string]any{"uri": uri}); err != nil {
		t.Fatal(err)
	}
	_, r.migErr = q.waitMigration(20 * time.Second)
	if r.migErr == nil {
		t.Logf("FINDING restore %s: incoming migration completed in %v", o.name, time.Since(tIn).Round(time.Microsecond))
	} else if g.Exited() {
		// QEMU exits when an incoming migration fails.
		r.migErr = fmt.Errorf("%v (qemu exited: %v)", r.migErr, g.Wait())
	}
	return r
}

// checkContinues resumes a restored guest and checks that it counts on from
// the checkpoint's tick instead of booting again.
func (r *restored) checkContinues(ctx context.Context, t *testing.T, ck checkpoint) {
	t.Helper()
	st, err := r.q.status()
	if err != nil {
		t.Fatal(err)
	}
	// The source was stopped when it saved, so the destination stays paused.
	if st != "paused" {
		t.Errorf("status after incoming migration: %q, want paused", st)
	}
	if _, err := r.q.exec("cont", nil); err != nil {
		t.Fatal(err)
	}
	tc := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if _, err := WaitTicks(wctx, r.serial, ck.lastTick+5); err != nil {
		log, _ := os.ReadFile(r.serial)
		t.Fatalf("restored guest: %v\nserial log:\n%s\nqemu: %s", err, tail(string(log), 2000), r.g.Output())
	}
	ticks, err := Ticks(r.serial)
	if err != nil {
		t.Fatal(err)
	}
	if ticks[0] <= ck.lastTick || ticks[0] > ck.lastTick+2 {
		t.Errorf("restored guest's first tick %d, want %d or %d (checkpoint tick %d)",
			ticks[0], ck.lastTick+1, ck.lastTick+2, ck.lastTick)
	}
	for i := 1; i < len(ticks); i++ {
		if ticks[i] != ticks[i-1]+1 {
			t.Errorf("ticks not consecutive: %v", ticks)
			break
		}
	}
	log, _ := os.ReadFile(r.serial)
	if bytes.Contains(log, []byte("ckptfs-init")) || bytes.Contains(log, []byte("Linux version")) {
		t.Errorf("restored guest booted again:\n%s", tail(string(log), 2000))
	}
	t.Logf("restored guest continues: checkpoint tick %d, ticks %v, 5 ticks %v after cont",
		ck.lastTick, ticks, time.Since(tc).Round(time.Millisecond))
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// memPathUse returns the open flags (as "O_RDWR" etc.) of QEMU's fd on path
// and the permissions of its mapping, from /proc.
func memPathUse(t *testing.T, pid int, path string) (flags, perms string) {
	t.Helper()
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(fdDir)
	if err != nil {
		t.Fatal(err)
	}
	flags = "not open"
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(fdDir, e.Name()))
		if err != nil || target != path {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(info), "\n") {
			if v, ok := strings.CutPrefix(line, "flags:"); ok {
				fl, _ := strconv.ParseUint(strings.TrimSpace(v), 8, 64)
				switch fl & syscall.O_ACCMODE {
				case syscall.O_RDONLY:
					flags = "O_RDONLY"
				case syscall.O_WRONLY:
					flags = "O_WRONLY"
				case syscall.O_RDWR:
					flags = "O_RDWR"
				}
			}
		}
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	perms = "not mapped"
	for _, line := range strings.Split(string(maps), "\n") {
		if strings.HasSuffix(line, " "+path) {
			if f := strings.Fields(line); len(f) > 1 {
				perms = f[1]
			}
		}
	}
	return flags, perms
}

// canAccess reports whether uid (as "other") can read path and search its
// parent directories.
func canAccess(path string, uid int) bool {
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm()&0o004 == 0 {
		return false
	}
	for d := filepath.Dir(path); ; d = filepath.Dir(d) {
		di, err := os.Stat(d)
		if err != nil || di.Mode().Perm()&0o001 == 0 {
			return false
		}
		if d == "/" || d == "." {
			return true
		}
	}
}

func waitGuest(g *Guest, d time.Duration) error {
	select {
	case <-g.Done():
		return nil
	case <-time.After(d):
		g.Kill()
		return fmt.Errorf("still running after %v", d)
	}
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
