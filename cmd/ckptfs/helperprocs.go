package main

import (
	"os"

	"github.com/ckptfs/ckptfs/kvmrec/synthguest"
	"github.com/ckptfs/ckptfs/replay"
	"github.com/urfave/cli/v2"
)

// runIfHelperProcess runs, and then exits, the helper processes the binary
// re-executes itself as: replay's measurement children and the synthetic
// guest. In any other process it returns at once.
func runIfHelperProcess() {
	replay.MaybeRunChild() // exits when this process is a replay child
	if len(os.Args) > 1 && os.Args[1] == "synth-guest" {
		os.Exit(synthguest.Main(os.Args[2:]))
	}
}

// synthGuestCommand runs the synthetic guest when global flags come before
// "synth-guest", where runIfHelperProcess does not look.
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
