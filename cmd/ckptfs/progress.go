package main

import (
	"os"

	"github.com/ckptfs/ckptfs/index"
	"github.com/schollz/progressbar/v3"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

// progressFor returns a progress callback that draws a bar on a terminal and
// does nothing otherwise (pipes, logs), plus a func that
// finishes the bar.
func progressFor(c *cli.Context, what string) (index.Progress, func()) {
	f, ok := c.App.ErrWriter.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, func() {}
	}
	var bar *progressbar.ProgressBar
	return func(done, total uint64) {
			if bar == nil {
				bar = progressbar.NewOptions64(int64(total),
					progressbar.OptionSetWriter(f),
					progressbar.OptionSetDescription(what),
					progressbar.OptionShowBytes(true),
					progressbar.OptionThrottle(100e6),
					progressbar.OptionClearOnFinish(),
				)
			}
			_ = bar.Set64(int64(done))
		}, func() {
			if bar != nil {
				_ = bar.Finish()
			}
		}
}
