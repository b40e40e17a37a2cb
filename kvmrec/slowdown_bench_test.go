package kvmrec

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/qmp"
	"github.com/ckptfs/ckptfs/internal/testenv"
	"github.com/ckptfs/ckptfs/test/integration/qemuguest"
)

// slowdownTicks is how many guest ticks one measurement times: each tick
// rewrites 4 MiB of a tmpfs file and, with ckptfs.period_us=0, does not
// sleep, so the guest is busy throughout.
const slowdownTicks = 20

// slowdownMode is how the benchmark's QEMU runs: plain record mode, with
// the working-set plugin as record --deterministic loads it, or with the
// plugin's mem=on as replay --precision loads it.
type slowdownMode struct {
	name string
	args string // plugin arguments after counters=, "" for none
	on   bool   // load the plugin
}

var slowdownModes = []slowdownMode{{name: "plain"}, {name: "plugin", on: true}, {name: "mem", args: ",mem=on", on: true}}

// BenchmarkQEMURecordSlowdown: the QEMU test guest in QEMU's record mode
// (-icount shift=auto,rr=record) without and with the working-set plugin as
// record --deterministic loads it (exec counters, fault-around off), and
// with the plugin's mem=on (what replay --precision adds), in turn, each a
// fresh QEMU: the wall time of a fixed workload (slowdownTicks ticks,
// counted from the serial log once the guest runs) and the guest
// instructions per wall second over it (query-replay). Reports the medians
// and the ratios to plain record mode; the goal for the plugin is ≤ 1.5. No
// recorder runs: checkpoints are not part of the figure.
func BenchmarkQEMURecordSlowdown(b *testing.B) {
	testenv.RequireQEMU(b)
	art, err := qemuguest.Build("")
	if err != nil {
		b.Fatal(err)
	}
	plugin := filepath.Join(b.TempDir(), "ckptfs-ws.so")
	if out, err := exec.Command("cc", "-O2", "-shared", "-fPIC", "-o", plugin, filepath.Join("wsplugin", "wsplugin.c")).CombinedOutput(); err != nil {
		b.Fatalf("building the working-set plugin: %v\n%s", err, out)
	}
	rounds := max(b.N, 2)
	secs := map[string][]float64{}
	cpu := map[string][]float64{}
	rate := map[string][]float64{}
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for _, m := range slowdownModes {
			t := timeRecordMode(b, art, plugin, m)
			secs[m.name] = append(secs[m.name], t.wall.Seconds())
			cpu[m.name] = append(cpu[m.name], t.cpu.Seconds())
			rate[m.name] = append(rate[m.name], float64(t.insns)/t.wall.Seconds())
		}
	}
	b.StopTimer()
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	plainS, plainC, plainR := median(secs["plain"]), median(cpu["plain"]), median(rate["plain"])
	for _, m := range slowdownModes {
		s, c, r := median(secs[m.name]), median(cpu[m.name]), median(rate[m.name])
		b.ReportMetric(s, m.name+"-s")
		b.ReportMetric(c, m.name+"-cpu-s")
		b.ReportMetric(r/1e6, m.name+"-Minsn/s")
		if m.on {
			b.ReportMetric(s/plainS, m.name+"-time-ratio")
			b.ReportMetric(c/plainC, m.name+"-cpu-ratio")
			b.ReportMetric(plainR/r, m.name+"-rate-ratio")
		}
	}
}

// slowdownTiming is one measurement of timeRecordMode: wall time, QEMU's
// CPU time (user and system, all threads: on a shared host less noisy than
// the wall) and guest instructions.
type slowdownTiming struct {
	wall, cpu time.Duration
	insns     uint64
}

// processCPU returns the user and system time of a process and its threads
// (/proc/PID/stat fields 14 and 15, in clock ticks of 10 ms).
func processCPU(b *testing.B, pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The command name, field 2, is in parentheses and may hold spaces.
	f := strings.Fields(string(data[bytes.LastIndexByte(data, ')')+1:]))
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// timeRecordMode boots the test guest in record mode as m says and times
// slowdownTicks ticks after the third.
func timeRecordMode(b *testing.B, art qemuguest.Artifacts, plugin string, m slowdownMode) slowdownTiming {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := shmDir(b)
	mem, serial := filepath.Join(dir, "ram"), filepath.Join(dir, "serial")
	extra := []string{"-icount", "shift=auto,rr=record,rrfile=" + filepath.Join(dir, "replay.log")}
	counters := filepath.Join(dir, "exec.counters")
	if m.on {
		if err := os.WriteFile(counters, nil, 0o600); err != nil {
			b.Fatal(err)
		}
		if err := os.Truncate(counters, (256<<20/pageSize+execTrailerWords)*8); err != nil {
			b.Fatal(err)
		}
		extra = append(extra, "-plugin", fmt.Sprintf("%s,ram=%s,counters=%s%s", plugin, mem, counters, m.args))
	}
	g, err := qemuguest.Start(ctx, qemuguest.Config{Kernel: art.Kernel, Initrd: art.Initrd, MemMiB: 256, MemPath: mem, Share: true,
		QMPSocket: filepath.Join(dir, "qmp.sock"), SerialPath: serial, ExtraArgs: extra,
		Append: qemuguest.DefaultAppend + " ckptfs.period_us=0"})
	if err != nil {
		b.Fatal(err)
	}
	defer g.Kill()
	c, err := qmp.Dial(ctx, g.Cfg.QMPSocket)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	icount := func() uint64 {
		var rs struct {
			ICount uint64 `json:"icount"`
		}
		if err := c.Execute(ctx, "query-replay", nil, &rs); err != nil {
			b.Fatal(err)
		}
		return rs.ICount
	}
	const first = 3
	if _, err := waitTick(ctx, serial, first); err != nil {
		b.Fatalf("%s: %v\n%s", m.name, err, g.Output())
	}
	t0, i0, c0 := time.Now(), icount(), processCPU(b, g.Pid())
	if _, err := waitTick(ctx, serial, first+slowdownTicks); err != nil {
		b.Fatalf("%s: %v\n%s", m.name, err, g.Output())
	}
	t := slowdownTiming{wall: time.Since(t0), cpu: processCPU(b, g.Pid()) - c0, insns: icount() - i0}
	b.Logf("%s: %d ticks in %s (QEMU's CPU time %s), %d instructions", m.name, slowdownTicks,
		t.wall.Round(time.Millisecond), t.cpu, t.insns)
	if m.on {
		// A plugin that counted nothing would make the ratio meaningless.
		data, err := os.ReadFile(counters)
		if err != nil {
			b.Fatal(err)
		}
		if !slices.ContainsFunc(data, func(c byte) bool { return c != 0 }) {
			b.Fatalf("%s: the plugin counted no frame:\n%s", m.name, g.Output())
		}
	}
	return t
}

// waitTick polls the serial log every 5 ms until it shows tick n.
func waitTick(ctx context.Context, serial string, n int) (int, error) {
	for {
		if last, _ := qemuguest.LastTick(serial); last >= n {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("tick %d not reached: %w", n, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
