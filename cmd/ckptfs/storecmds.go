package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/storeapi"
	"github.com/urfave/cli/v2"
)

func importCommand() *cli.Command {
	return &cli.Command{
		Name:      "import",
		Usage:     "import raw RAM images as checkpoints 0..n of a new run",
		ArgsUsage: "DUMP0 DUMP1 ...",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "run", Usage: "name `R` of the new run"},
			&cli.StringFlag{Name: "ws-dir", Usage: "`DIR` with <i>.ws working sets (list format) for i < n"},
			noPackFlag,
		},
		Action: func(c *cli.Context) error {
			if c.String("run") == "" {
				return usageErrorf("import: --run is required")
			}
			if c.NArg() == 0 {
				return usageErrorf("import: give at least one dump")
			}
			if err := index.ValidRunName(c.String("run")); err != nil {
				return usageErrorf("import: %v", err)
			}
			dumps := make([]string, c.NArg())
			for i, d := range c.Args().Slice() {
				dumps[i] = absPath(c, d)
			}
			return withBackend(c, true, func(b storeBackend) error {
				progress, done := progressFor(c, "import")
				start := time.Now()
				ri, err := b.Import(c.Context, index.ImportSpec{Run: c.String("run"), Dumps: dumps,
					WSDir: absPath(c, c.String("ws-dir")), Progress: progress})
				done()
				if err != nil {
					return err
				}
				secs := time.Since(start).Seconds()
				fmt.Fprintf(c.App.Writer, "imported %s: %d checkpoints of %s in %.1fs (%.0f MiB/s)\n", ri.Name, ri.Checkpoints,
					humanBytes(ri.RAMSize), secs, float64(ri.RAMSize)*float64(ri.Checkpoints)/secs/(1<<20))
				return packRun(c, b, ri.Name)
			})
		},
	}
}

func exportCommand() *cli.Command {
	return &cli.Command{
		Name:      "export",
		Usage:     "write checkpoint I of a run as a raw image (holes stay holes)",
		ArgsUsage: "OUT",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "run", Usage: "the run `R` to export from"},
			&cli.StringFlag{Name: "interval", Usage: "checkpoint number `I`"},
			&cli.BoolFlag{Name: "sparse", Usage: "only the working set W_i is data"},
		},
		Action: func(c *cli.Context) error {
			if c.String("run") == "" || c.String("interval") == "" || c.NArg() != 1 {
				return usageErrorf("export: want --run R --interval I OUT")
			}
			i, err := parseInterval(c.String("interval"))
			if err != nil {
				return err
			}
			return withBackend(c, false, func(b storeBackend) error {
				progress, done := progressFor(c, "export")
				defer done()
				return b.Export(c.Context, index.ExportSpec{Run: c.String("run"), Interval: i, Sparse: c.Bool("sparse"),
					Out: absPath(c, c.Args().First()), Progress: progress})
			})
		},
	}
}

func parseInterval(s string) (int, error) {
	i, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return 0, usageErrorf("interval %q is not a number (intervals are 0, 1, 2, ...)", s)
	case i < 0:
		return 0, usageErrorf("interval %d is negative (intervals are 0, 1, 2, ...)", i)
	}
	return i, nil
}

func lsCommand() *cli.Command {
	return &cli.Command{
		Name:      "ls",
		Usage:     "list runs, or the checkpoints of run R",
		ArgsUsage: "[R]",
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageErrorf("ls: at most one run")
			}
			return withBackend(c, false, func(b storeBackend) error {
				tw := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
				defer tw.Flush()
				if c.NArg() == 0 {
					runs, err := b.Runs(c.Context)
					if err != nil {
						return err
					}
					fmt.Fprintln(tw, "RUN\tRAM\tCHECKPOINTS\tINTERVALS\tTRACKER\tCREATED")
					for _, r := range runs {
						fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\n", r.Name, humanBytes(r.RAMSize), r.Checkpoints, r.Intervals, r.Tracker, r.Created.Local().Format(time.DateTime))
					}
					return nil
				}
				ri, err := b.Run(c.Context, c.Args().First())
				if err != nil {
					return err
				}
				stats, err := b.Intervals(c.Context, ri.Name)
				if err != nil {
					return err
				}
				fmt.Fprintln(tw, "CHECKPOINT\tCHANGED\tNEW\tSTORED\tWS(i)\tDIRTY(i)\tDOWNTIME")
				for i, is := range stats {
					ws, dirty := "-", "-"
					if i < ri.Intervals {
						ws = strconv.FormatUint(is.WorkingSetFrames, 10)
					}
					if i+1 < len(stats) {
						dirty = strconv.FormatUint(is.DirtyFrames, 10)
					}
					fmt.Fprintf(tw, "%d\t%d\t%d\t%s\t%s\t%s\t%s\n", i, is.Checkpoint.ChangedFrames, is.Checkpoint.NewFrames,
						humanBytes(is.Checkpoint.BytesStored), ws, dirty, time.Duration(is.Checkpoint.DowntimeNS).Round(10*time.Microsecond))
				}
				return nil
			})
		},
	}
}

func infoCommand() *cli.Command {
	return &cli.Command{
		Name:      "info",
		Usage:     "show a run, or interval I of it",
		ArgsUsage: "R [I]",
		Flags:     []cli.Flag{&cli.BoolFlag{Name: "json", Usage: "print JSON"}},
		Action: func(c *cli.Context) error {
			if c.NArg() < 1 || c.NArg() > 2 {
				return usageErrorf("info: want R [I]")
			}
			return withBackend(c, false, func(b storeBackend) error {
				var v any
				var err error
				if c.NArg() == 2 {
					i, perr := parseInterval(c.Args().Get(1))
					if perr != nil {
						return perr
					}
					v, err = b.Interval(c.Context, c.Args().First(), i)
				} else {
					v, err = b.Run(c.Context, c.Args().First())
				}
				if err != nil {
					return err
				}
				if c.Bool("json") {
					enc := json.NewEncoder(c.App.Writer)
					enc.SetIndent("", "  ")
					return enc.Encode(v)
				}
				switch x := v.(type) {
				case index.RunInfo:
					fmt.Fprintf(c.App.Writer, "run:         %s\nram:         %s (%d frames of %d bytes)\ncheckpoints: %d\nintervals:   %d (with working sets)\nrecorder:    %s\ntracker:     %s\ncreated:     %s\n",
						x.Name, humanBytes(x.RAMSize), x.Frames, x.PageSize, x.Checkpoints, x.Intervals, x.Recorder, x.Tracker, x.Created.Local().Format(time.RFC3339))
				case index.IntervalStats:
					fmt.Fprintf(c.App.Writer, "interval:      %d\nws frames:     %d\ndirty frames:  %d\nnew frames:    %d\nbytes stored:  %s\ndowntime:      %s\ndevice state:  %s\nws packed:     %t\n",
						x.Interval, x.WorkingSetFrames, x.DirtyFrames, x.NewFrames, humanBytes(x.BytesStored), time.Duration(x.DowntimeNS), humanBytes(x.DeviceStateBytes), x.Packed)
				}
				return nil
			})
		},
	}
}

func verifyCommand() *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check every record of the store (or of run R)",
		ArgsUsage: "[R]",
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return usageErrorf("verify: at most one run")
			}
			return withBackend(c, false, func(b storeBackend) error {
				progress, done := progressFor(c, "verify")
				rep, err := b.Verify(c.Context, c.Args().First(), progress)
				done()
				if err != nil {
					return fmt.Errorf("verify failed: %w", err)
				}
				tables := ""
				if rep.Tables > 0 {
					tables = fmt.Sprintf("; %d table files checked", rep.Tables)
				}
				fmt.Fprintf(c.App.Writer, "ok: %d runs, %d checkpoints, %d versions, %d frames (%s), %d working-set packs verified%s\n",
					rep.Runs, rep.Checkpoints, rep.Versions, rep.Blobs, humanBytes(rep.BlobBytes), rep.Packs, tables)
				return nil
			})
		},
	}
}

func rmCommand() *cli.Command {
	return &cli.Command{
		Name:      "rm",
		Usage:     "remove run R and everything stored for it",
		ArgsUsage: "R",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("rm: want one run")
			}
			return withBackend(c, false, func(b storeBackend) error {
				return b.DeleteRun(c.Context, c.Args().First())
			})
		},
	}
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

var noPackFlag = &cli.BoolFlag{Name: "no-pack", Usage: "do not build working-set packs (contiguous copies of each W_i that make sparse loads faster)"}

// packRun builds the working-set packs of a run that has just been
// written, unless --no-pack. Packs are derived data: a failure leaves
// every checkpoint intact and is reported, and the run is served without
// the missing packs.
func packRun(c *cli.Context, b storeBackend, run string) error {
	if c.Bool("no-pack") {
		return nil
	}
	if c.Context.Err() != nil {
		// Stopped by Ctrl-C: the checkpoints are what the user waited for.
		printNotPacked(c.App.ErrWriter, run)
		return nil
	}
	if err := buildPacks(c, b, run); err != nil {
		return fmt.Errorf("%w (every checkpoint of %s is committed; `ckptfs pack %s` finishes the packs)", err, run, run)
	}
	return nil
}

// buildPacks packs run and says what it built.
func buildPacks(c *cli.Context, b storeBackend, run string) error {
	ps, err := b.Pack(c.Context, run)
	if err != nil {
		return err
	}
	printPacked(c.App.Writer, run, ps)
	return nil
}

func printNotPacked(w io.Writer, run string) {
	fmt.Fprintf(w, "working sets of %s not packed; `ckptfs pack %s` builds the packs\n", run, run)
}

func printPacked(w io.Writer, run string, ps storeapi.PackResult) {
	if ps.Intervals > 0 {
		fmt.Fprintf(w, "packed %d working sets of %s (%s) in %.1fs\n", ps.Intervals, run,
			humanBytes(ps.Frames*index.PageSize), ps.Seconds)
	}
}

func packCommand() *cli.Command {
	return &cli.Command{
		Name:      "pack",
		Usage:     "build the missing working-set packs of a run (contiguous copies of each W_i for fast sparse loads)",
		ArgsUsage: "R",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("pack: give one run")
			}
			if err := index.ValidRunName(c.Args().First()); err != nil {
				return usageErrorf("pack: %v", err)
			}
			return withBackend(c, false, func(b storeBackend) error {
				return buildPacks(c, b, c.Args().First())
			})
		},
	}
}
