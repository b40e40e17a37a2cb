package synthguest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Args returns the command-line arguments that make Main run cfg (Ready is
// not passed on).
func Args(cfg Config) []string {
	a := []string{
		"-mem", cfg.MemPath,
		"-ram-size", strconv.FormatUint(cfg.RAMSize, 10),
		"-qmp", cfg.QMPSocket,
		"-ws", strconv.FormatFloat(cfg.WSFraction, 'g', -1, 64),
		"-dirty", strconv.FormatFloat(cfg.DirtyFraction, 'g', -1, 64),
		"-locality", strconv.FormatFloat(cfg.Locality, 'g', -1, 64),
		"-seed", strconv.FormatUint(cfg.Seed, 10),
	}
	if cfg.TruthDir != "" {
		a = append(a, "-truth", cfg.TruthDir)
	}
	if cfg.FaultAround {
		a = append(a, "-fault-around")
	}
	if cfg.TickInterval > 0 {
		a = append(a, "-tick", cfg.TickInterval.String())
	}
	if cfg.TickFrames > 0 {
		a = append(a, "-tick-frames", strconv.Itoa(cfg.TickFrames))
	}
	return a
}

// Main runs a guest from command-line arguments (see Args) until SIGINT,
// SIGTERM or a QMP quit, and returns the exit status: 0, 1 for a failure,
// 2 for bad usage. The CLI offers it as a hidden command; tests re-execute
// their own binary with it.
func Main(args []string) int {
	return mainTo(args, os.Stderr)
}

func mainTo(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("synth-guest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg Config
	var size string
	fs.StringVar(&cfg.MemPath, "mem", "", "RAM backing `file` (created, truncated to -ram-size)")
	fs.StringVar(&size, "ram-size", "64M", "RAM `size` in bytes (suffixes K, M, G)")
	fs.StringVar(&cfg.QMPSocket, "qmp", "", "QMP unix socket `path` to listen on")
	fs.Float64Var(&cfg.WSFraction, "ws", 0.05, "fraction of frames accessed per interval")
	fs.Float64Var(&cfg.DirtyFraction, "dirty", 0.02, "fraction of frames written per interval")
	fs.Float64Var(&cfg.Locality, "locality", 0.25, "0: random single frames; 1: runs of 64 frames")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "workload seed")
	fs.StringVar(&cfg.TruthDir, "truth", "", "`dir` for truth files (accessed/changed frames, RAM hashes per pause)")
	fs.DurationVar(&cfg.TickInterval, "tick", 0, "spread each interval's accesses: -tick-frames operations per tick")
	fs.BoolVar(&cfg.FaultAround, "fault-around", false, "leave the kernel's fault-around on for the RAM mapping (as in a QEMU guest)")
	fs.IntVar(&cfg.TickFrames, "tick-frames", 256, "operations per tick")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "synth-guest: unexpected arguments %q\n", fs.Args())
		return 2
	}
	n, err := parseSize(size)
	if err != nil {
		fmt.Fprintf(stderr, "synth-guest: -ram-size: %v\n", err)
		return 2
	}
	cfg.RAMSize = n
	if cfg.MemPath == "" || cfg.QMPSocket == "" {
		fmt.Fprintln(stderr, "synth-guest: -mem and -qmp are required")
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(stderr, "synth-guest:", err)
		return 1
	}
	return 0
}

func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(s), "B"), "I")
	switch {
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		mult, t = 1<<20, t[:len(t)-1]
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 {
		return 0, errors.New("want a positive size like 268435456, 256M or 1G")
	}
	return v * mult, nil
}

// WaitReady waits until the guest's QMP socket exists, or the deadline.
// The name appears only once the guest listens (see listenUnix).
func WaitReady(path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("synthguest: QMP socket %s not up after %v", path, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
