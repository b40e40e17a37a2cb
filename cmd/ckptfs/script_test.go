package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/ckptfs/ckptfs/index"
)

// TestMain lets the test binary stand in for the ckptfs binary: the
// transcripts run "ckptfs" as a real process, with its own exit code.
func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){"ckptfs": main})
}

// TestScripts runs the CLI transcripts in testdata/script: each .txtar is
// the commands a user types and what they see. Every script has its store
// at $WORK/store ($CKPTFS_STORE), created by its first import.
//
// Beyond testscript's own commands:
//
//	exits CODE CMD ARGS...   run CMD, which must exit with CODE; stdout and
//	                         stderr stay for the next stdout/stderr checks
//	dump FILE N [I=B ...]    write a raw RAM image of N zero frames, frame I
//	                         filled with byte B
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: filepath.Join("testdata", "script"),
		Setup: func(env *testscript.Env) error {
			env.Setenv("CKPTFS_STORE", filepath.Join(env.WorkDir, "store"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exits": cmdExits,
			"dump":  cmdDump,
		},
	})
}

func cmdExits(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: exits CODE CMD ARGS...")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exits: code %q is not a number", args[0])
	}
	got := 0
	var ee *exec.ExitError
	if err := ts.Exec(args[1], args[2:]...); errors.As(err, &ee) {
		got = ee.ExitCode()
	} else if err != nil {
		ts.Fatalf("exits: %v", err)
	}
	if got != want {
		ts.Fatalf("%s exited with %d, want %d", args[1], got, want)
	}
}

func cmdDump(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 2 {
		ts.Fatalf("usage: dump FILE N [I=B ...]")
	}
	n, err := strconv.Atoi(args[1])
	if err != nil || n < 1 {
		ts.Fatalf("dump: frame count %q", args[1])
	}
	img := make([]byte, n*index.PageSize)
	for _, fill := range args[2:] {
		is, bs, ok := strings.Cut(fill, "=")
		i, ierr := strconv.Atoi(is)
		b, berr := strconv.ParseUint(bs, 0, 8)
		if !ok || ierr != nil || berr != nil || i < 0 || i >= n {
			ts.Fatalf("dump: fill %q: want I=B with 0 <= I < %d and B a byte", fill, n)
		}
		frame := img[i*index.PageSize : (i+1)*index.PageSize]
		for j := range frame {
			frame[j] = byte(b)
		}
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), img, 0o644))
}
