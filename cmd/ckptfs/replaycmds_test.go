package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReplayIntervalCommands(t *testing.T) {
	mnt := t.TempDir()
	for run, js := range map[string]string{
		"d": `{"name":"d","ram_size":4194304,"page_size":4096,"deterministic":true,"qemu_args":["-icount","shift=auto,rr=record,rrfile=/x"]}`,
		"n": `{"name":"n","ram_size":4194304,"page_size":4096}`,
	} {
		os.MkdirAll(filepath.Join(mnt, run, "full"), 0o755)
		os.WriteFile(filepath.Join(mnt, run, "run.json"), []byte(js), 0o644)
		os.WriteFile(filepath.Join(mnt, run, "full", "0.ram"), make([]byte, 4<<20), 0o644)
	}
	exe, _ := os.Executable()
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"replay", "interval", "--mount", mnt, "--run", "d"}, 2, "want --mount MNT --run R --interval I"},
		{[]string{"replay", "interval", "--mount", mnt, "--run", "d", "--interval", "x"}, 2, `interval "x"`},
		{[]string{"replay", "interval", "--mount", mnt, "--run", "d", "--interval", "0", "extra"}, 2, "unexpected argument"},
		{[]string{"replay", "interval", "--mount", mnt, "--run", "d", "--interval", "0", "--deadline", "soon"}, 2, "deadline"},
		{[]string{"replay", "interval", "--mount", mnt, "--run", "n", "--interval", "0"}, 1,
			"run n is not deterministic: record it with ckptfs record --deterministic"},
		{[]string{"replay", "interval", "--mount", mnt, "--run", "d", "--interval", "0"}, 1, "has no end yet"},
		{[]string{"replay", "run", "--mount", mnt}, 2, "want --mount MNT --run R"},
		{[]string{"replay", "run", "--mount", mnt, "--run", "d", "--jobs", "0"}, 2, "--jobs"},
		{[]string{"replay", "run", "--mount", mnt, "--run", "d", "--intervals", "1,x"}, 2, "-intervals"},
		{[]string{"replay", "run", "--mount", mnt, "--run", "n"}, 1, "run n is not deterministic"},
		{[]string{"replay", "run", "--mount", mnt, "--run", "d", "--plugin", "/no/such.so,a=1"}, 1, "plugin /no/such.so: no such file"},
		{[]string{"replay", "run", "--mount", mnt, "--run", "d", "--precision", "--ws-plugin", "/no/ws.so"}, 1, "plugin /no/ws.so: no such file"},
		// Commas stay inside one --plugin value: a=1 is not a plugin.
		{[]string{"replay", "run", "--mount", mnt, "--run", "d", "--plugin", exe + ",a=1,b=2", "--plugin", exe}, 1, "no interval to replay yet"},
	} {
		code, out, errs := ckptfs(t, tc.args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) || strings.Count(errs, "\n") != 1 || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want exit %d and one line with %q", tc.args[:2], code, out, errs, tc.code, tc.msg)
		}
	}
}
