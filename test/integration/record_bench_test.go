package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// recordBenchTicks is how many guest ticks BenchmarkDeterministicRecording
// times. With ckptfs.period_us=0 a tick rewrites 4 MiB of a tmpfs file
// without sleeping: a fixed amount of guest work, several seconds of it
// under TCG, so several checkpoints fall inside one measurement.
const recordBenchTicks = 20

// BenchmarkDeterministicRecording times a busy guest in QEMU's plain record
// mode (-icount shift=auto,rr=record, no ckptfs) and under ckptfs record
// --deterministic (1 s checkpoints: the working-set plugin, a translation
// cache flush and a page-table walk per pause, device state, pre-copy,
// commits), in turn, each a fresh QEMU: the wall time of recordBenchTicks
// ticks counted from the serial log once the guest runs. Reports the
// medians and their ratio, the recording slowdown of exact tracking with
// the whole recorder in the loop; the goal is ≤ 1.5.
func BenchmarkDeterministicRecording(b *testing.B) {
	testenv.RequireFUSE(b)
	testenv.RequireQEMU(b)
	art, err := qemuguest.Build(qemuguest.CacheDir())
	if err != nil {
		b.Fatalf("building the test guest: %v", err)
	}
	app := qemuguest.DefaultAppend + " ckptfs.period_us=0"
	var plain, recorded, plainRate, recordedRate []float64
	checkpoints := 0
	for r := 0; r < max(b.N, 2); r++ {
		p := timePlainRecord(b, art, app)
		c := timeCkptfsRecord(b, art, app)
		b.Logf("plain record mode: %s, %.1f M instructions/s; ckptfs record --deterministic: %s, %.1f M instructions/s, %d checkpoints",
			p.wall.Round(time.Millisecond), p.rate/1e6, c.wall.Round(time.Millisecond), c.rate/1e6, c.checkpoints)
		plain, plainRate = append(plain, p.wall.Seconds()), append(plainRate, p.rate)
		recorded, recordedRate = append(recorded, c.wall.Seconds()), append(recordedRate, c.rate)
		checkpoints += c.checkpoints
	}
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	p, c := median(plain), median(recorded)
	b.ReportMetric(p, "plain-s")
	b.ReportMetric(c, "ckptfs-s")
	b.ReportMetric(c/p, "slowdown")
	b.ReportMetric(median(plainRate)/1e6, "plain-Minsn/s")
	b.ReportMetric(median(recordedRate)/1e6, "ckptfs-Minsn/s")
	b.ReportMetric(median(plainRate)/median(recordedRate), "rate-slowdown")
	b.ReportMetric(float64(checkpoints)/float64(len(recorded)), "checkpoints")
}

// recordTiming is one measurement: the wall time of the ticks, the guest's
// instructions per wall second over them, and checkpoints committed.
type recordTiming struct {
	wall        time.Duration
	rate        float64
	checkpoints int
}

// timePlainRecord boots the guest in QEMU's record mode alone and times
// recordBenchTicks ticks after the third.
func timePlainRecord(b *testing.B, art qemuguest.Artifacts, app string) recordTiming {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := shmTempDir(b)
	serial := filepath.Join(dir, "serial")
	g, err := qemuguest.Start(ctx, qemuguest.Config{Kernel: art.Kernel, Initrd: art.Initrd, MemPath: filepath.Join(dir, "ram"), Share: true,
		QMPSocket: filepath.Join(dir, "qmp.sock"), SerialPath: serial, Append: app,
		ExtraArgs: []string{"-icount", "shift=auto,rr=record,rrfile=" + filepath.Join(dir, "replay.log")}})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Kill()
	c, err := qmp.Dial(ctx, filepath.Join(dir, "qmp.sock"))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	var i0, i1 uint64
	icount := func(into *uint64) {
		var rs struct {
			ICount uint64 `json:"icount"`
		}
		if err := c.Execute(ctx, "query-replay", nil, &rs); err != nil {
			b.Fatal(err)
		}
		*into = rs.ICount
	}
	d, err := timeTicks(ctx, serial, func() { icount(&i0) }, func() { icount(&i1) })
	if err != nil {
		b.Fatalf("plain record mode: %v\n%s", err, g.Output())
	}
	return recordTiming{wall: d, rate: float64(i1-i0) / d.Seconds()}
}

// timeCkptfsRecord records the guest with ckptfs record --deterministic,
// times recordBenchTicks ticks after the third and stops the recording with
// SIGINT. The instruction rate is that between the first and the last
// checkpoint committed while the ticks were timed (their icounts and commit
// times, from ckptfs info).
func timeCkptfsRecord(b *testing.B, art qemuguest.Artifacts, app string) recordTiming {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := b.TempDir()
	serial, store := filepath.Join(dir, "serial"), filepath.Join(dir, "store")
	d := startDaemon(b, "--store", store, "record", "--run", "busy", "--deterministic",
		"--interval", "1s", "--duration", "10m", "--no-pack", "--",
		"-machine", "pc,accel=tcg", "-m", fmt.Sprintf("%dM", qemuguest.DefaultMemMiB), "-nodefaults", "-no-user-config",
		"-display", "none", "-no-reboot", "-kernel", art.Kernel, "-initrd", art.Initrd, "-append", app,
		"-serial", "file:"+serial)
	var t0, t1 time.Time
	took, err := timeTicks(ctx, serial, func() { t0 = time.Now() }, func() { t1 = time.Now() })
	if err != nil {
		b.Fatalf("ckptfs record: %v\n%s", err, d.stderr.String())
	}
	d.stop(b)
	var first, last struct {
		ICount      uint64    `json:"icount"`
		CommittedAt time.Time `json:"committed_at"`
	}
	n := 0
	for i := 0; ; i++ {
		code, out, _ := ckptfs(b, store, "info", "--json", "busy", fmt.Sprint(i))
		if code != 0 {
			break
		}
		var st struct {
			Checkpoint struct {
				ICount      uint64    `json:"icount"`
				CommittedAt time.Time `json:"committed_at"`
			} `json:"checkpoint"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			b.Fatalf("info busy %d: %v", i, err)
		}
		if c := st.Checkpoint; c.CommittedAt.After(t0) && c.CommittedAt.Before(t1) {
			if n == 0 {
				first = c
			}
			last = c
			n++
		}
	}
	if n < 2 {
		b.Fatalf("ckptfs record committed %d checkpoints while timed:\n%s", n, d.stderr.String())
	}
	return recordTiming{wall: took, checkpoints: n,
		rate: float64(last.ICount-first.ICount) / last.CommittedAt.Sub(first.CommittedAt).Seconds()}
}

// timeTicks waits for tick 3 in the serial log and returns the time to
// tick 3+recordBenchTicks, calling atStart and atEnd at those ticks.
func timeTicks(ctx context.Context, serial string, atStart, atEnd func()) (time.Duration, error) {
	const first = 3
	wait := func(n int) error {
		for {
			if last, _ := qemuguest.LastTick(serial); last >= n {
				return nil
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("tick %d not reached: %w", n, ctx.Err())
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	if err := wait(first); err != nil {
		return 0, err
	}
	atStart()
	t0 := time.Now()
	if err := wait(first + recordBenchTicks); err != nil {
		return 0, err
	}
	d := time.Since(t0)
	atEnd()
	return d, nil
}

// shmTempDir is a temporary directory on tmpfs, for guest RAM.
func shmTempDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "ckptfs-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}
