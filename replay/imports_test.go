package replay_test

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps DESIGN.md's rule: replay talks to the mount's files like
// any VMM and imports neither fs, kvmrec, the CLI, go-fuse nor Pebble.
func TestImports(t *testing.T) {
	forbidden := []string{
		"github.com/ckptfs/ckptfs/fs", "github.com/ckptfs/ckptfs/kvmrec", "github.com/ckptfs/ckptfs/cmd",
		"github.com/urfave/cli", "github.com/cockroachdb/pebble", "github.com/hanwen/go-fuse",
	}
	for _, dir := range []string{".", "replaytest"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range af.Imports {
				p, _ := strconv.Unquote(imp.Path.Value)
				for _, bad := range forbidden {
					if p == bad || strings.HasPrefix(p, bad+"/") {
						t.Errorf("%s imports %s", f, p)
					}
				}
			}
		}
	}
}
