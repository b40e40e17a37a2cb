package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/ckptfs/ckptfs/replay"
	"github.com/urfave/cli/v2"
)

// slurmFlags are replay run's flags for running the replays as a Slurm job.
func slurmFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "slurm", Usage: "run the replays as a Slurm job array (sbatch), a task per interval, --jobs at a time; MNT and the job directory must have the same path on the nodes"},
		&cli.StringFlag{Name: "slurm-dir", Usage: "with --slurm: the job `DIR` for the batch script, each task's output and report (default ./ckptfs-slurm-R)"},
		&cli.StringSliceFlag{Name: "sbatch-arg", Usage: "with --slurm: pass `ARG` to sbatch, e.g. --sbatch-arg=--partition=replay (repeatable)"},
	}
}

// slurmConfig builds the Slurm job of replay run --slurm from the flags:
// every task runs this binary's `replay interval` with the same plugins,
// deadline and precision, paths made absolute for the nodes.
func slurmConfig(c *cli.Context) (replay.SlurmConfig, error) {
	bin, err := os.Executable()
	if err != nil {
		return replay.SlurmConfig{}, fmt.Errorf("replay run --slurm: the path of this binary: %w", err)
	}
	var args []string
	for _, p := range plugins(c) {
		so, rest, _ := strings.Cut(p, ",")
		if rest != "" {
			rest = "," + rest
		}
		args = append(args, "--plugin", absPath(c, so)+rest)
	}
	if ws := replayWSPlugin(c); ws != "" {
		args = append(args, "--ws-plugin", absPath(c, ws))
	}
	if c.Bool("precision") {
		args = append(args, "--precision")
	}
	if c.IsSet("qemu") {
		args = append(args, "--qemu", c.String("qemu"))
	}
	if c.IsSet("deadline") {
		args = append(args, "--deadline", c.Duration("deadline").String())
	}
	dir := c.String("slurm-dir")
	if dir == "" {
		dir = "ckptfs-slurm-" + c.String("run")
	}
	return replay.SlurmConfig{Binary: bin, TaskArgs: args, Dir: absPath(c, dir), SbatchArgs: c.StringSlice("sbatch-arg")}, nil
}
