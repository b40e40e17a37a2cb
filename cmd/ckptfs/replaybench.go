package main

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/ckptfs/ckptfs/replay"
	"github.com/urfave/cli/v2"
)

// intervalsFlag returns --intervals (an int slice flag: "1,3" or repeated),
// which must not be negative; nil when not given.
func intervalsFlag(c *cli.Context) ([]int, error) {
	is := c.IntSlice("intervals")
	for _, i := range is {
		if i < 0 {
			return nil, usageErrorf("--intervals: %d is negative", i)
		}
	}
	return is, nil
}

func replayBench(c *cli.Context) error {
	if c.String("mount") == "" || c.String("run") == "" {
		return usageErrorf("replay bench: want --mount MNT --run R")
	}
	conc := c.IntSlice("concurrency")
	if err := replay.CheckConcurrency(conc); err != nil {
		return usageErrorf("replay bench: --concurrency: %v", err)
	}
	intervals, err := intervalsFlag(c)
	if err != nil {
		return err
	}
	modes, err := replay.ParseModes(c.StringSlice("modes"))
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
