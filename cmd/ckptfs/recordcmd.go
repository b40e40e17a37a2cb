package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/kvmrec"
	"github.com/urfave/cli/v2"
)

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
