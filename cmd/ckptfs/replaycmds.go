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
		Usage: "load a TCG plugin into the replay, as QEMU's -plugin SO[,ARGS] (repeatable)"}
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
			&cli.StringFlag{Name: "mount", Usage: "the ckptfs mount (MNT)"},
			&cli.StringFlag{Name: "run", Usage: "the deterministic run to replay (MNT/R)"},
			pluginFlag(),
			&cli.StringFlag{Name: "json", Usage: "also write the report as JSON to FILE"},
			&cli.DurationFlag{Name: "deadline", Usage: "kill a replay that has not reached the next checkpoint after this long",
				DefaultText: "10m, or 60s + 1s per million instructions when longer"},
			&cli.StringFlag{Name: "qemu", Usage: "QEMU binary (default qemu-system-x86_64)"},
			&cli.BoolFlag{Name: "precision", Usage: "load the working-set plugin with mem=on and report the frames of W_I the replay touched (a lower bound) and those it touched outside W_I; slows the replay"},
			&cli.StringFlag{Name: "ws-plugin", Usage: "with --precision: the working-set plugin (default: ckptfs-ws.so beside this binary, or $CKPTFS_WS_PLUGIN)"},
		}
	}
	return []*cli.Command{
		{
			Name:  "interval",
			Usage: "re-execute interval I of a deterministic run from checkpoint I to I+1 and verify it; exit 0 only when verified",
			Flags: append(common(),
				&cli.StringFlag{Name: "interval", Usage: "the interval I to replay"},
				&cli.BoolFlag{Name: "full", Usage: "start from full/<I>.ram instead of the sparse <I>.ram"},
			),
			Action: replayIntervalCmd,
		},
		{
			Name:  "run",
			Usage: "replay every interval of a deterministic run, K at a time, each verified; exit 0 only when all are",
			Flags: append(common(),
				&cli.IntFlag{Name: "jobs", Value: 1, Usage: "replays at once (K)"},
				&cli.StringFlag{Name: "intervals", Usage: "comma-separated intervals (default: every interval with a working set and a next checkpoint)"},
				&cli.BoolFlag{Name: "compare-full", Usage: "then replay all intervals again from full/<I>.ram and report sparse/full memory and start time"},
			),
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
		Full: c.Bool("full"), Plugins: plugins(c), QEMU: c.String("qemu"), Deadline: c.Duration("deadline"),
		PrecisionPlugin: precisionPlugin(c), Logger: slog.Default()}
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
	intervals, err := parseInts(c.String("intervals"))
	if err != nil {
		return err
	}
	out := c.App.ErrWriter
	cfg := replay.RunConfig{Intervals: intervals, Mount: absPath(c, c.String("mount")), Run: c.String("run"), Jobs: c.Int("jobs"),
		Plugins: plugins(c), QEMU: c.String("qemu"), Deadline: c.Duration("deadline"), Compare: c.Bool("compare-full"),
		PrecisionPlugin: precisionPlugin(c), Logger: slog.Default(),
		OnInterval: func(r replay.IntervalReport) {
			fmt.Fprintf(out, "ckptfs: interval %d from %s: %s in %s\n", r.Interval, r.Source, r.Verdict, r.Total.Round(time.Millisecond))
		}}
	rep, err := replay.Run(c.Context, cfg)
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
