package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	ckfs "github.com/ckptfs/ckptfs/fs"
	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/kvmrec"
	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
	"github.com/ckptfs/ckptfs/replay"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"
)

// extraCommands are the commands that wire fs, kvmrec and replay.
func extraCommands() []*cli.Command {
	return []*cli.Command{mountCommand(), recordCommand(), replayCommand(), demoCommand(), synthGuestCommand()}
}

// maybeRunChild runs the helper processes the binary re-executes itself as:
// replay's measurement children and the synthetic guest.
func maybeRunChild() bool {
	replay.MaybeRunChild() // exits when this process is a replay child
	if len(os.Args) > 1 && os.Args[1] == "synth-guest" {
		os.Exit(synthguest.Main(os.Args[2:]))
	}
	return false
}

func synthGuestCommand() *cli.Command {
	return &cli.Command{
		Name:            "synth-guest",
		Usage:           "run the synthetic guest (for tests and the demo)",
		Hidden:          true,
		SkipFlagParsing: true,
		Action: func(c *cli.Context) error {
			if code := synthguest.Main(c.Args().Slice()); code != 0 {
				return &exitError{code: code, err: errAlreadyReported}
			}
			return nil
		},
	}
}

var metricsFlag = &cli.StringFlag{Name: "metrics-addr", Usage: "serve Prometheus metrics on this address (e.g. 127.0.0.1:9477)"}

// serveMetrics makes the process's metrics registry and serves it when addr
// is set.
func serveMetrics(addr string) (*prometheus.Registry, func(), error) {
	reg := newRegistry()
	if addr == "" {
		return reg, func() {}, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("--metrics-addr: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	slog.Info("metrics", "url", "http://"+ln.Addr().String()+"/metrics")
	return reg, func() { srv.Close() }, nil
}

func newRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// ownStore opens (or creates) the store for mount, which must own it: no
// forwarding. Creating an empty store lets a user mount first and record into
// the running mount, as DESIGN.md describes.
func ownStore(c *cli.Context) (*index.Store, error) {
	return index.Open(storeDir(c), index.Options{Create: true, Logger: slog.Default()})
}

// checkMountpoint checks that mnt can be mounted on, cleaning up a stale
// mount when asked. Commands call it before they open or create the store,
// so that a bad mount point leaves nothing behind.
func checkMountpoint(c *cli.Context, mnt string) error {
	err := ckfs.CheckMountpoint(mnt)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ckfs.ErrStaleMount) && c.Bool("cleanup-stale"):
		slog.Warn("cleaning up a stale mount", "mnt", mnt)
		return ckfs.CleanupStale(mnt)
	case errors.Is(err, ckfs.ErrStaleMount):
		return fmt.Errorf("%v (run again with --cleanup-stale to unmount it)", err)
	}
	return err
}

// mountAt mounts st at mnt, handling stale mounts.
func mountAt(c *cli.Context, st *index.Store, mnt string, prefetch string, reg prometheus.Registerer) (*ckfs.Server, error) {
	if err := checkMountpoint(c, mnt); err != nil {
		return nil, err
	}
	return ckfs.Mount(mnt, ckfs.FromIndex(st), ckfs.MountOptions{
		Prefetch: prefetch, AllowOther: c.Bool("allow-other"), Logger: slog.Default(), Registry: reg, Store: st.Dir(),
	})
}

func mountFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "prefetch", Value: "ws", Usage: "what opening <i>.ram pushes into the page cache: ws or none"},
		&cli.BoolFlag{Name: "allow-other", Usage: "let other users read the mount (guest memory holds secrets)"},
		&cli.BoolFlag{Name: "cleanup-stale", Usage: "unmount a stale mount left by a killed daemon first"},
		metricsFlag,
	}
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "serve the store at MNT until Ctrl-C (foreground)",
		ArgsUsage: "MNT",
		Flags:     mountFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("mount: want one mount point")
			}
			if p := c.String("prefetch"); p != "ws" && p != "none" {
				return usageErrorf("mount: --prefetch %q: want ws or none", p)
			}
			mnt := absPath(c, c.Args().First())
			if err := checkMountpoint(c, mnt); err != nil {
				return err
			}
			st, err := ownStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			reg, stopMetrics, err := serveMetrics(c.String("metrics-addr"))
			if err != nil {
				return err
			}
			defer stopMetrics()
			ckfs.TuneGC(st.CacheCapacity())
			srv, err := mountAt(c, st, mnt, c.String("prefetch"), reg)
			if err != nil {
				return err
			}
			sock, err := serveStore(st, &ownedStore{st: st, what: "ckptfs mount " + mnt + " (pid " + strconv.Itoa(os.Getpid()) + ")", mountPoint: mnt})
			if err != nil {
				srv.Unmount()
				return err
			}
			defer sock.Close()
			fmt.Fprintf(c.App.ErrWriter, "ckptfs: serving %s at %s; Ctrl-C unmounts\n", st.Dir(), mnt)
			return waitUnmount(c.Context, srv, c.App.ErrWriter)
		},
	}
}

// waitUnmount serves until ctx ends (Ctrl-C, SIGTERM) or the mount goes away
// (fusermount -u), then unmounts cleanly.
func waitUnmount(ctx context.Context, srv *ckfs.Server, stderr io.Writer) error {
	gone := make(chan struct{})
	go func() { srv.Wait(); close(gone) }()
	select {
	case <-ctx.Done():
		if err := srv.Unmount(); err != nil {
			return fmt.Errorf("unmounting %s: %w", srv.Dir(), err)
		}
		<-gone
		fmt.Fprintf(stderr, "ckptfs: unmounted %s\n", srv.Dir())
	case <-gone:
	}
	return nil
}

func recordCommand() *cli.Command {
	return &cli.Command{
		Name:      "record",
		Usage:     "record a running QEMU as continuous checkpoints, or start one deterministically (--deterministic -- QEMU-ARGS)",
		ArgsUsage: "[-- QEMU-ARGS...]",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "deterministic", Usage: "start QEMU in record mode with the machine arguments after --, so that every interval can be replayed exactly (replay interval, replay run)"},
			&cli.StringFlag{Name: "ws-plugin", Usage: "with --deterministic: the working-set TCG plugin (default: ckptfs-ws.so beside this binary, or $CKPTFS_WS_PLUGIN)"},
			&cli.StringFlag{Name: "qemu", Value: "qemu-system-x86_64", Usage: "with --deterministic: the QEMU binary to start"},
			&cli.StringFlag{Name: "run", Usage: "name of the new run"},
			&cli.StringFlag{Name: "qmp", Usage: "QEMU's QMP unix socket"},
			&cli.StringFlag{Name: "mem", Usage: "QEMU's memory-backend-file mem-path (share=on)"},
			&cli.DurationFlag{Name: "interval", Value: time.Second, Usage: "time between checkpoints"},
			&cli.IntFlag{Name: "count", Usage: "stop after N checkpoints"},
			&cli.DurationFlag{Name: "duration", Usage: "stop after this long"},
			&cli.StringFlag{Name: "tracker", Value: kvmrec.TrackerPagemap, Usage: "pagemap (working sets) or hash (dirty frames only)"},
			&cli.BoolFlag{Name: "device-state", Usage: "save QEMU's device state with every checkpoint"},
			&cli.BoolFlag{Name: "exact-ws", Usage: "unmap every touched frame during the pause, none after it: exact working sets (with pre-copy about as short a pause)"},
			&cli.BoolFlag{Name: "no-precopy", Usage: "take the whole checkpoint during the pause instead of pre-copying it with the VM running: longer pauses, less work while the VM runs"},
			&cli.StringFlag{Name: "mount", Usage: "also serve the store at this mount point while recording"},
			&cli.StringFlag{Name: "prefetch", Value: "ws", Usage: "with --mount: ws or none"},
			&cli.BoolFlag{Name: "allow-other", Usage: "with --mount: let other users read it"},
			&cli.BoolFlag{Name: "cleanup-stale", Usage: "with --mount: unmount a stale mount first"},
			noPackFlag,
			&cli.BoolFlag{Name: "pack-live", Usage: "also pack each interval's working set while recording (for replays during the recording)"},
			metricsFlag,
		},
		Action: func(c *cli.Context) error {
			required := []string{"run", "qmp", "mem"}
			if c.Bool("deterministic") {
				required = []string{"run"}
				if c.NArg() == 0 {
					return usageErrorf("record --deterministic: give QEMU's machine arguments after --")
				}
			} else if c.NArg() > 0 {
				return usageErrorf("record: unexpected arguments %q (QEMU arguments need --deterministic)", c.Args().Slice())
			}
			for _, f := range required {
				if c.String(f) == "" {
					return usageErrorf("record: --%s is required", f)
				}
			}
			if err := index.ValidRunName(c.String("run")); err != nil {
				return usageErrorf("record: %v", err)
			}
			if t := c.String("tracker"); t != kvmrec.TrackerPagemap && t != kvmrec.TrackerHash {
				return usageErrorf("record: --tracker %q: want pagemap or hash", t)
			}
			if c.Duration("interval") <= 0 {
				return usageErrorf("record: --interval must be positive")
			}
			job := recordJob{
				cfg: kvmrec.Config{
					Run: c.String("run"), QMPSocket: absPath(c, c.String("qmp")), MemPath: absPath(c, c.String("mem")),
					Interval: c.Duration("interval"), Count: c.Int("count"), Duration: c.Duration("duration"),
					Tracker: c.String("tracker"), DeviceState: c.Bool("device-state"), ExactWorkingSets: c.Bool("exact-ws"), NoPrecopy: c.Bool("no-precopy"),
					PackLive: c.Bool("pack-live") && !c.Bool("no-pack"),
				},
				noPack: c.Bool("no-pack"),
			}
			if c.Bool("deterministic") {
				job.deterministic, job.qemu, job.machineArgs, job.plugin = true, c.String("qemu"), c.Args().Slice(), wsPlugin(c)
			}
			out := c.App.ErrWriter
			rep := cliReporter{stdout: c.App.Writer, stderr: out, log: slog.Default()}
			if mnt := c.String("mount"); mnt != "" {
				if err := checkMountpoint(c, absPath(c, mnt)); err != nil {
					return err
				}
			}
			st, err := index.Open(storeDir(c), index.Options{Create: true, Logger: slog.Default()})
			if errors.Is(err, index.ErrStoreBusy) {
				if c.String("mount") != "" {
					return fmt.Errorf("%v; record without --mount to record through it", err)
				}
				return recordThroughOwner(c.Context, storeDir(c), err, job, c.String("log-level"), rep)
			}
			if err != nil {
				return err
			}
			defer st.Close()
			reg, stopMetrics, err := serveMetrics(c.String("metrics-addr"))
			if err != nil {
				return err
			}
			defer stopMetrics()
			o := &ownedStore{st: st, what: "ckptfs record " + job.cfg.Run + " (pid " + strconv.Itoa(os.Getpid()) + ")"}
			if mnt := c.String("mount"); mnt != "" {
				srv, err := mountAt(c, st, absPath(c, mnt), c.String("prefetch"), reg)
				if err != nil {
					return err
				}
				defer srv.Unmount()
				o.mountPoint = srv.Dir()
				fmt.Fprintf(out, "ckptfs: serving %s at %s while recording\n", st.Dir(), srv.Dir())
			}
			sock, err := serveStore(st, o)
			if err != nil {
				return err
			}
			defer sock.Close()
			return runRecording(c.Context, st, job, reg, rep)
		},
	}
}

func formatCheckpoint(s kvmrec.CheckpointStats) string {
	line := fmt.Sprintf("checkpoint %d: %d changed frames, downtime %s", s.Checkpoint, s.ChangedFrames, s.Downtime.Round(10*time.Microsecond))
	if s.VMDowntime > 0 {
		line += fmt.Sprintf(" (VM stopped %s)", s.VMDowntime.Round(10*time.Microsecond))
	}
	if s.Phases.Precopy > 0 {
		line += fmt.Sprintf(", pre-copy %s", s.Phases.Precopy.Round(10*time.Microsecond))
	}
	return line
}

func replayCommand() *cli.Command {
	return &cli.Command{
		Name:  "replay",
		Usage: "restore a checkpoint into QEMU, re-execute intervals deterministically, or measure loading",
		Subcommands: append([]*cli.Command{
			{
				Name:      "qemu",
				Usage:     "start a QEMU that continues the recorded VM from checkpoint I",
				ArgsUsage: "[-- QEMU-ARGS...]",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "mount"}, &cli.StringFlag{Name: "run"}, &cli.StringFlag{Name: "interval"},
					&cli.BoolFlag{Name: "sparse", Hidden: true, Usage: "refused: use replay interval for <I>.ram"},
					&cli.StringFlag{Name: "accel", Usage: "tcg (default) or kvm"},
					&cli.StringFlag{Name: "serial", Usage: "write the guest's serial console to this file"},
					&cli.StringFlag{Name: "qemu", Usage: "QEMU binary (default qemu-system-x86_64)"},
				},
				Action: replayQEMU,
			},
			{
				Name:  "bench",
				Usage: "measure load time and footprint: full vs sparse vs lazy, K replays at once",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "mount"}, &cli.StringFlag{Name: "run"},
					&cli.StringFlag{Name: "no-prefetch-mount", Usage: "a second mount with --prefetch none, for mode (d)"},
					&cli.StringFlag{Name: "concurrency", Value: "1,4,16", Usage: "replays at once, comma-separated"},
					&cli.StringFlag{Name: "intervals", Usage: "comma-separated intervals (default: all with a working set)"},
					&cli.StringFlag{Name: "modes", Usage: "modes to measure, comma-separated: a-d or full, sparse, lazy, lazy-noprefetch (default: all; reductions and the floor need a)"},
					&cli.BoolFlag{Name: "warm", Usage: "do not drop caches between measurements"},
					&cli.StringFlag{Name: "json", Usage: "write the report as JSON to FILE"},
					&cli.StringFlag{Name: "plot", Usage: "write a plot to FILE (.png or .svg)"},
				},
				Action: replayBench,
			},
		}, replayIntervalCommands()...),
	}
}

func replayQEMU(c *cli.Context) error {
	if c.String("mount") == "" || c.String("run") == "" || c.String("interval") == "" {
		return usageErrorf("replay qemu: want --mount MNT --run R --interval I")
	}
	if c.Bool("sparse") {
		// W_I covers interval I only; the guest replay qemu continues
		// runs past it and would read holes as zeros.
		return usageErrorf("replay qemu --sparse: a continued guest leaves W_I after interval I; replay interval re-executes interval I from <I>.ram")
	}
	i, err := parseInterval(c.String("interval"))
	if err != nil {
		return err
	}
	cfg := replay.QEMUConfig{Mount: absPath(c, c.String("mount")), Run: c.String("run"), Interval: i, Accel: c.String("accel"), QEMU: c.String("qemu"),
		SerialPath: absPath(c, c.String("serial")), Args: c.Args().Slice(), Logger: slog.Default(),
		Stderr: c.App.ErrWriter}
	q, err := replay.QEMU(c.Context, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.App.ErrWriter, "ckptfs: QEMU (pid %d) continues %s from checkpoint %d; Ctrl-C stops it\n", q.Pid(), cfg.Run, i)
	done := make(chan error, 1)
	go func() { done <- q.Wait() }()
	select {
	case <-c.Context.Done():
		q.Stop()
		<-done
		return nil
	case err := <-done:
		return err
	}
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, usageErrorf("%q is not a list of non-negative integers", s)
		}
		out = append(out, n)
	}
	return out, nil
}

func replayBench(c *cli.Context) error {
	if c.String("mount") == "" || c.String("run") == "" {
		return usageErrorf("replay bench: want --mount MNT --run R")
	}
	conc, err := replay.ParseConcurrency(c.String("concurrency"))
	if err != nil {
		return usageErrorf("replay bench: --concurrency: %v", err)
	}
	intervals, err := parseInts(c.String("intervals"))
	if err != nil {
		return err
	}
	modes, err := replay.ParseModes(c.String("modes"))
	if err != nil {
		return usageErrorf("replay bench: --modes: %v", err)
	}
	cfg := replay.BenchConfig{Mount: absPath(c, c.String("mount")), Run: c.String("run"),
		NoPrefetchMount: absPath(c, c.String("no-prefetch-mount")), Concurrency: conc, Intervals: intervals,
		Modes: modes, Logger: slog.Default()}
	if c.Bool("warm") {
		cfg.Drop = replay.DropNone
	} else {
		cfg.DropStore = storeDropper(c, cfg.Mount)
	}
	return runBench(c, cfg, absPath(c, c.String("json")), absPath(c, c.String("plot")))
}

// storeDropper returns how to empty the block cache of the process serving
// mnt, found through the store directory in MNT/.status: the store itself
// when this command runs inside that process, else its socket. nil when the
// mount does not say (then the bench notes that the store stays warm).
func storeDropper(c *cli.Context, mnt string) func() error {
	data, err := os.ReadFile(filepath.Join(mnt, ".status"))
	if err != nil {
		return nil
	}
	var st struct {
		Store string `json:"store"`
	}
	if json.Unmarshal(data, &st) != nil || st.Store == "" {
		return nil
	}
	ctx := c.Context
	if err := dropStoreCache(ctx, st.Store); err != nil {
		// Measure anyway; the report notes that the store stayed warm.
		slog.Warn("replay bench: cannot empty the mount's store cache", "store", st.Store, "err", err)
		return nil
	}
	return func() error { return dropStoreCache(ctx, st.Store) }
}

func runBench(c *cli.Context, cfg replay.BenchConfig, jsonPath, plotPath string) error {
	rep, err := replay.Bench(c.Context, cfg)
	if err != nil {
		return err
	}
	rep.Table(c.App.Writer)
	if jsonPath != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(jsonPath, append(data, '\n'), 0o644); err != nil {
			return fmt.Errorf("--json: %w", err)
		}
	}
	if plotPath != "" {
		if err := rep.WritePlot(plotPath); err != nil {
			return err
		}
	}
	return nil
}
