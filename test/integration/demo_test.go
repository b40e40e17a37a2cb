package integration

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestDemo runs the README's main job the way `make demo` does, on the
// synthetic guest and with --no-wait, twice in one directory: each run
// records, mounts, prints the bench table and the report, and leaves no
// mount and no guest RAM behind; the second removes the first one's run
// from the demo's store, so repeated demos do not pile up.
func TestDemo(t *testing.T) {
	testenv.RequireFUSE(t)
	dir := filepath.Join(t.TempDir(), "demo")
	shmBefore := demoShm(t)
	var runs []string
	for round := 0; round < 2; round++ {
		code, out, errs := ckptfs(t, filepath.Join(dir, "unused-store"), "demo", "--synthetic", "--no-wait",
			"--dir", dir, "--count", "3", "--interval", "300ms", "--ram-mib", "64", "--concurrency", "1")
		if code != 0 {
			t.Fatalf("demo round %d: exit %d\n%s\n%s", round, code, out, errs)
		}
		m := regexp.MustCompile(`recording 3 checkpoints of run (demo-[0-9-]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("demo round %d: no run name in\n%s", round, out)
		}
		runs = append(runs, m[1])
		for _, want := range []string{"(a) full eager", "(b) sparse eager", "(c) lazy + prefetch",
			"(d) lazy, no prefetch", "floor: filling fresh memory", "Report: " + dir + "/bench.json"} {
			if !strings.Contains(out, want) {
				t.Errorf("demo round %d: output lacks %q:\n%s", round, want, out)
			}
		}
		if round == 1 && !strings.Contains(out, "removed the earlier demo run "+runs[0]) {
			t.Errorf("second demo did not say it removed %s:\n%s", runs[0], out)
		}
		for _, mnt := range []string{"mnt", "mnt-noprefetch"} {
			if isMounted(filepath.Join(dir, mnt)) {
				t.Errorf("demo round %d left %s mounted", round, mnt)
			}
		}
		if got := demoShm(t); got != shmBefore {
			t.Errorf("demo round %d left guest RAM in /dev/shm (%d ckptfs-demo entries, %d before)", round, got, shmBefore)
		}
	}
	if runs[0] == runs[1] {
		t.Fatalf("both demos recorded run %s", runs[0])
	}

	data, err := os.ReadFile(filepath.Join(dir, "bench.json"))
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Run     string `json:"run"`
		Results []struct {
			Mode string `json:"mode"`
		} `json:"results"`
		Floor *struct {
			WS int64 `json:"ws_ns"`
		} `json:"floor"`
	}
	if err := json.Unmarshal(data, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Run != runs[1] || len(rep.Results) != 4 || rep.Floor == nil || rep.Floor.WS <= 0 {
		t.Errorf("bench.json: run %s, %d results, floor %+v; want run %s, 4 modes at K=1 and a floor", rep.Run, len(rep.Results), rep.Floor, runs[1])
	}

	// Only the latest demo run is left in the demo's store.
	ls := mustCkptfs(t, filepath.Join(dir, "store"), "ls")
	if !strings.Contains(ls, runs[1]) || strings.Contains(ls, runs[0]) {
		t.Errorf("demo store after two demos:\n%s", ls)
	}
}

// demoShm counts the demo's guest RAM directories in /dev/shm.
func demoShm(t *testing.T) int {
	t.Helper()
	m, err := filepath.Glob("/dev/shm/ckptfs-demo-*")
	if err != nil {
		t.Fatal(err)
	}
	return len(m)
}
