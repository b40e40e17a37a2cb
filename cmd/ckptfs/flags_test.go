package main

import (
	"io"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// TestEveryFlagHasUsage walks every command of the app and fails on a flag
// whose help says nothing: --help must tell what each flag takes and does.
func TestEveryFlagHasUsage(t *testing.T) {
	app := newApp(nil, io.Discard, io.Discard)
	checked := 0
	check := func(where string, flags []cli.Flag) {
		for _, f := range flags {
			checked++
			d, ok := f.(cli.DocGenerationFlag)
			if !ok {
				t.Errorf("%s: flag %v has no usage text to show", where, f.Names())
				continue
			}
			if strings.TrimSpace(d.GetUsage()) == "" {
				t.Errorf("%s: flag --%s has an empty Usage", where, f.Names()[0])
			}
		}
	}
	check("ckptfs", app.Flags)
	var walk func(path string, cmds []*cli.Command)
	walk = func(path string, cmds []*cli.Command) {
		for _, c := range cmds {
			p := path + " " + c.Name
			if strings.TrimSpace(c.Usage) == "" {
				t.Errorf("%s: command has an empty Usage", p)
			}
			check(p, c.Flags)
			walk(p, c.Subcommands)
		}
	}
	walk("ckptfs", app.Commands)
	if checked < 40 {
		t.Fatalf("only %d flags found: the walk misses commands", checked)
	}
}
