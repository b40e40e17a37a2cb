package main

import "github.com/urfave/cli/v2"

// extraCommands are the commands that wire fs, kvmrec and replay.
func extraCommands() []*cli.Command { return nil }

// maybeRunChild runs the helper child processes the binary re-executes
// itself as (replay measurements, the synthetic guest).
func maybeRunChild() bool { return false }
