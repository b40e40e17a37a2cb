package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ckptfs/ckptfs/replay"
	"github.com/urfave/cli/v2"
)

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
					&cli.StringFlag{Name: "mount", Usage: "the ckptfs mount `MNT` that serves the run"},
					&cli.StringFlag{Name: "run", Usage: "the recorded run `R` (MNT/R)"},
					&cli.StringFlag{Name: "interval", Usage: "continue from checkpoint `I` (MNT/R/full/I.ram and I.dev)"},
					&cli.BoolFlag{Name: "sparse", Hidden: true, Usage: "refused: use replay interval for <I>.ram"},
					&cli.StringFlag{Name: "accel", Usage: "accelerator `ACCEL`: tcg (default) or kvm"},
					&cli.StringFlag{Name: "serial", Usage: "write the guest's serial console to `FILE`"},
					&cli.StringFlag{Name: "qemu", Usage: "QEMU `BINARY` (default qemu-system-x86_64)"},
				},
				Action: replayQEMU,
			},
			{
				Name:  "bench",
				Usage: "measure load time and footprint: full vs sparse vs lazy, K replays at once",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "mount", Usage: "the ckptfs mount `MNT` (with --prefetch ws) to load from"},
					&cli.StringFlag{Name: "run", Usage: "the run `R` whose intervals are loaded (MNT/R)"},
					&cli.StringFlag{Name: "no-prefetch-mount", Usage: "a second mount `MNT` of the store with --prefetch none, for mode (d)"},
					&cli.IntSliceFlag{Name: "concurrency", Value: cli.NewIntSlice(1, 4, 16), Usage: "`LIST` of replays at once, comma-separated or repeated"},
					&cli.IntSliceFlag{Name: "intervals", Usage: "`LIST` of intervals, comma-separated or repeated (default: all with a working set)"},
					&cli.StringSliceFlag{Name: "modes", Usage: "`LIST` of modes to measure, comma-separated: a-d or full, sparse, lazy, lazy-noprefetch (default: all; reductions and the floor need a)"},
					&cli.BoolFlag{Name: "warm", Usage: "do not drop caches between measurements"},
					&cli.StringFlag{Name: "json", Usage: "write the report as JSON to `FILE`"},
					&cli.StringFlag{Name: "plot", Usage: "write a plot to `FILE` (.png or .svg)"},
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

// pluginList collects repeated --plugin values whole: "SO,ARGS" keeps its
// commas (a string slice flag would split it).
type pluginList []string

func (p *pluginList) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return fmt.Errorf("empty plugin")
	}
	*p = append(*p, v)
	return nil
}

func (p *pluginList) String() string { return strings.Join(*p, " ") }

func pluginFlag() cli.Flag {
	return &cli.GenericFlag{Name: "plugin", Value: &pluginList{},
		Usage: "load a TCG plugin `SO[,ARGS]` into the replay, as QEMU's -plugin (repeatable)"}
}

func plugins(c *cli.Context) []string {
	if p, ok := c.Generic("plugin").(*pluginList); ok && p != nil {
		return append([]string(nil), *p...)
	}
	return nil
}

// replayIntervalCommands are the deterministic replay commands of replay.
func replayIntervalCommands() []*cli.Command {
	common := func() []cli.Flag {
		return []cli.Flag{
			&cli.StringFlag{Name: "mount", Usage: "the ckptfs mount `MNT`"},
			&cli.StringFlag{Name: "run", Usage: "the deterministic run `R` to replay (MNT/R)"},
			pluginFlag(),
			&cli.StringFlag{Name: "json", Usage: "also write the report as JSON to `FILE`"},
			&cli.DurationFlag{Name: "deadline", Usage: "kill a replay that has not reached the next checkpoint after this `DURATION`",
				DefaultText: "10m, or 60s + 1s per million instructions when longer"},
			&cli.StringFlag{Name: "qemu", Usage: "QEMU `BINARY` (default qemu-system-x86_64)"},
			&cli.BoolFlag{Name: "precision", Usage: "load the working-set plugin with mem=on and report the frames of W_I the replay touched (a lower bound) and those it touched outside W_I; slows the replay"},
			&cli.StringFlag{Name: "ws-plugin", Usage: "the working-set plugin `SO` (default: $CKPTFS_WS_PLUGIN, or ckptfs-ws.so beside this binary)"},
		}
	}
	return []*cli.Command{
		{
			Name:  "interval",
			Usage: "re-execute interval I of a deterministic run from checkpoint I to I+1 and verify it; exit 0 only when verified",
			Flags: append(common(),
				&cli.StringFlag{Name: "interval", Usage: "the interval `I` to replay"},
				&cli.BoolFlag{Name: "full", Usage: "start from full/<I>.ram instead of the sparse <I>.ram"},
			),
			Action: replayIntervalCmd,
		},
		{
			Name:  "run",
			Usage: "replay every interval of a deterministic run, K at a time, each verified; exit 0 only when all are",
			Flags: append(append(common(),
				&cli.IntFlag{Name: "jobs", Value: 1, Usage: "`K` replays at once"},
				&cli.IntSliceFlag{Name: "intervals", Usage: "`LIST` of intervals, comma-separated or repeated (default: every interval with a working set and a next checkpoint)"},
				&cli.BoolFlag{Name: "compare-full", Usage: "then replay all intervals again from full/<I>.ram loaded whole (a conventional restore) and report sparse/full memory and start time"},
			), slurmFlags()...),
			Action: replayRunCmd,
		},
	}
}

func replayIntervalCmd(c *cli.Context) error {
	if c.String("mount") == "" || c.String("run") == "" || c.String("interval") == "" {
		return usageErrorf("replay interval: want --mount MNT --run R --interval I")
	}
	if c.NArg() > 0 {
		return usageErrorf("replay interval: unexpected argument %q", c.Args().First())
	}
	i, err := parseInterval(c.String("interval"))
	if err != nil {
		return err
	}
	if c.Duration("deadline") < 0 {
		return usageErrorf("replay interval: --deadline must be positive")
	}
	cfg := replay.IntervalConfig{Mount: absPath(c, c.String("mount")), Run: c.String("run"), Interval: i,
		Full: c.Bool("full"), Plugins: plugins(c), WSPlugin: replayWSPlugin(c), QEMU: c.String("qemu"),
		Deadline: c.Duration("deadline"), PrecisionPlugin: precisionPlugin(c), Logger: slog.Default()}
	rep, err := replay.Interval(c.Context, cfg)
	if rep.QEMUArgs != nil { // QEMU ran: the report says how far it got
		rep.Table(c.App.Writer)
	}
	if jerr := writeReportJSON(c, rep); jerr != nil && err == nil {
		err = jerr
	}
	return err
}

func replayRunCmd(c *cli.Context) error {
	if c.String("mount") == "" || c.String("run") == "" {
		return usageErrorf("replay run: want --mount MNT --run R")
	}
	if c.NArg() > 0 {
		return usageErrorf("replay run: unexpected argument %q", c.Args().First())
	}
	if c.Int("jobs") < 1 {
		return usageErrorf("replay run: --jobs must be at least 1")
	}
	if c.Duration("deadline") < 0 {
		return usageErrorf("replay run: --deadline must be positive")
	}
	intervals, err := intervalsFlag(c)
	if err != nil {
		return err
	}
	out := c.App.ErrWriter
	cfg := replay.RunConfig{Intervals: intervals, Mount: absPath(c, c.String("mount")), Run: c.String("run"), Jobs: c.Int("jobs"),
		Plugins: plugins(c), WSPlugin: replayWSPlugin(c), QEMU: c.String("qemu"), Deadline: c.Duration("deadline"),
		Compare: c.Bool("compare-full"), PrecisionPlugin: precisionPlugin(c), Logger: slog.Default(),
		OnInterval: func(r replay.IntervalReport) {
			fmt.Fprintf(out, "ckptfs: interval %d from %s: %s in %s\n", r.Interval, r.Source, r.Verdict, r.Total.Round(time.Millisecond))
		}}
	var rep replay.RunReport
	if c.Bool("slurm") {
		sc, serr := slurmConfig(c)
		if serr != nil {
			return serr
		}
		rep, err = replay.RunSlurm(c.Context, cfg, sc)
	} else {
		if c.IsSet("slurm-dir") || c.IsSet("sbatch-arg") {
			return usageErrorf("replay run: --slurm-dir and --sbatch-arg go with --slurm")
		}
		rep, err = replay.Run(c.Context, cfg)
	}
	if len(rep.Sparse.Intervals) > 0 {
		rep.Table(c.App.Writer)
		if jerr := writeReportJSON(c, rep); jerr != nil && err == nil {
			err = jerr
		}
	}
	return err
}

// precisionPlugin is the working-set plugin with --precision, else "".
func precisionPlugin(c *cli.Context) string {
	if !c.Bool("precision") {
		return ""
	}
	return wsPlugin(c)
}

// writeReportJSON writes v to --json FILE, when given.
func writeReportJSON(c *cli.Context, v any) error {
	path := absPath(c, c.String("json"))
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	return nil
}
