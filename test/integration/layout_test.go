package integration

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/ckptfs/ckptfs"

// TestPackageBoundaries keeps the import rules of DESIGN.md: index imports
// no other ckptfs package; fs, kvmrec and replay import index (and the shared
// internal/ helpers) but none of each other; internal/ helpers import no
// ckptfs package, except internal/storeapi, which imports index for its wire
// types; only index imports Pebble, only fs imports go-fuse, only cmd/ckptfs
// imports urfave/cli.
func TestPackageBoundaries(t *testing.T) {
	out, err := exec.Command("go", "list", "-json", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	type pkg struct {
		ImportPath string
		Imports    []string
	}
	seen := 0
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		seen++
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		top := strings.SplitN(rel, "/", 2)[0]
		for _, imp := range p.Imports {
			irel, own := strings.CutPrefix(imp, module+"/")
			itop := strings.SplitN(irel, "/", 2)[0]
			switch {
			case strings.HasPrefix(imp, "github.com/cockroachdb/pebble") && top != "index":
				t.Errorf("%s imports Pebble; only index may", p.ImportPath)
			case strings.HasPrefix(imp, "github.com/hanwen/go-fuse") && top != "fs":
				t.Errorf("%s imports go-fuse; only fs may", p.ImportPath)
			case strings.HasPrefix(imp, "github.com/urfave/cli") && rel != "cmd/ckptfs":
				t.Errorf("%s imports urfave/cli; only cmd/ckptfs may", p.ImportPath)
			case !own || itop == top:
			case top == "index":
				t.Errorf("index imports %s; it must import no other ckptfs package", imp)
			case (top == "fs" || top == "kvmrec" || top == "replay") && itop != "index" && itop != "internal":
				t.Errorf("%s imports %s; fs, kvmrec and replay may import only index", p.ImportPath, imp)
			case rel == "internal/storeapi" && itop == "index":
			case top == "internal" && itop != "internal":
				t.Errorf("%s imports %s; internal helpers import no ckptfs package", p.ImportPath, imp)
			}
		}
	}
	if seen < 5 {
		t.Fatalf("go list saw only %d packages", seen)
	}
}

// TestReplayLinksNoStore: replay reads a mount's files like any VMM and
// never links the store (DESIGN.md: Packages), so nothing it depends on
// imports Pebble.
func TestReplayLinksNoStore(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", module+"/replay/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps gave only %q", deps)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "github.com/cockroachdb/pebble") || d == module+"/index" {
			t.Errorf("replay depends on %s", d)
		}
	}
}
