package fs

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestImports keeps the package's place in DESIGN.md: fs imports index and
// go-fuse, never the recorder, the replay harness, the CLI or Pebble.
func TestImports(t *testing.T) {
	files, _ := filepath.Glob("*.go")
	forbidden := []string{
		"github.com/ckptfs/ckptfs/kvmrec", "github.com/ckptfs/ckptfs/replay", "github.com/ckptfs/ckptfs/cmd",
		"github.com/ckptfs/ckptfs/test", "github.com/urfave/cli", "github.com/cockroachdb/pebble",
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, bad := range forbidden {
				if strings.HasPrefix(path, bad) {
					t.Errorf("%s imports %s", name, path)
				}
			}
		}
	}
}
