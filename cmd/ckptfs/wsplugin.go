package main

import (
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

// wsPluginName is the working-set TCG plugin that make builds beside the
// binary (from kvmrec/wsplugin).
const wsPluginName = "ckptfs-ws.so"

// wsPlugin returns the working-set plugin to load: --ws-plugin, else
// $CKPTFS_WS_PLUGIN, else ckptfs-ws.so in the binary's directory.
func wsPlugin(c *cli.Context) string {
	if p := c.String("ws-plugin"); p != "" {
		return absPath(c, p)
	}
	if p := os.Getenv("CKPTFS_WS_PLUGIN"); p != "" {
		return p
	}
	exe, err := os.Executable()
	if err != nil {
		return wsPluginName
	}
	return filepath.Join(filepath.Dir(exe), wsPluginName)
}

// replayWSPlugin is the working-set plugin a replay loads to turn the
// kernel's read-around off for guest RAM (exact miss counts), or "" when
// it is not there: replays work without it, and their miss counts may then
// include holes that read-around fetched.
func replayWSPlugin(c *cli.Context) string {
	p := wsPlugin(c)
	if st, err := os.Stat(p); err != nil || !st.Mode().IsRegular() {
		slog.Debug("replay without the working-set plugin: misses may include read-around", "plugin", p)
		return ""
	}
	return p
}
