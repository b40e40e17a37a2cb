package kvmrec

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestReclaimHazards lays out the /proc and /sys files that
// reclaimHazardsUnder reads, one machine per case.
func TestReclaimHazards(t *testing.T) {
	const (
		noSwap  = "Filename\tType\tSize\tUsed\tPriority\n"
		oneSwap = noSwap + "/swapfile\tfile\t1048572\t0\t-2\n"
		kdamond = "sys/kernel/mm/damon/admin/kdamonds/0/"
		scheme  = kdamond + "contexts/0/schemes/0/"
		filter  = scheme + "ops_filters/0/"
	)
	pageout := map[string]string{kdamond + "state": "on\n", scheme + "action": "pageout\n"}
	with := func(base map[string]string, extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  []string // substrings, one per hazard, in order
	}{
		{"nothing", map[string]string{"proc/swaps": noSwap}, nil},
		{"no /proc/swaps", nil, nil},
		{"swap", map[string]string{"proc/swaps": oneSwap}, []string{"swap is enabled"}},
		{"damon pageout", pageout, []string{"DAMON scheme pages out memory it finds idle (/" + strings.TrimSuffix(scheme, "/") + ")"}},
		{"damon off", with(pageout, map[string]string{kdamond + "state": "off\n"}), nil},
		{"damon other action", with(pageout, map[string]string{scheme + "action": "cold\n"}), nil},
		{"damon pageout of unmapped pages only", with(pageout, map[string]string{
			scheme + "ops_filters/nr_filters": "1\n",
			filter + "type":                   "unmapped\n", filter + "matching": "Y\n", filter + "allow": "Y\n",
		}), nil},
		{"damon pageout that a filter rejects unmapped pages from", with(pageout, map[string]string{
			scheme + "ops_filters/nr_filters": "1\n",
			filter + "type":                   "unmapped\n", filter + "matching": "Y\n", filter + "allow": "N\n",
		}), []string{"DAMON scheme pages out"}},
		{"damon_reclaim", map[string]string{"sys/module/damon_reclaim/parameters/enabled": "Y\n"}, []string{"DAMON_RECLAIM"}},
		{"damon_reclaim off", map[string]string{"sys/module/damon_reclaim/parameters/enabled": "N\n"}, nil},
		{"all", with(pageout, map[string]string{"proc/swaps": oneSwap, "sys/module/damon_reclaim/parameters/enabled": "Y\n"}),
			[]string{"swap is enabled", "DAMON scheme pages out", "DAMON_RECLAIM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			for name, content := range tc.files {
				p := filepath.Join(root, name)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got := reclaimHazardsUnder(root)
			if len(got) != len(tc.want) {
				t.Fatalf("hazards %q, want %d matching %q", got, len(tc.want), tc.want)
			}
			for i, w := range tc.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("hazard %d is %q, want it to mention %q", i, got[i], w)
				}
			}
		})
	}
}

// TestReclaimHazardsHere: on this machine the list says swap exactly when
// /proc/swaps lists a swap area, and the paths it names are the real ones.
func TestReclaimHazardsHere(t *testing.T) {
	b, err := os.ReadFile("/proc/swaps")
	if err != nil {
		t.Fatal(err)
	}
	swapOn := strings.Count(strings.TrimSpace(string(b)), "\n") > 0
	got := reclaimHazards()
	if !reflect.DeepEqual(got, reclaimHazardsUnder("/")) {
		t.Fatalf("reclaimHazards %q differs from reclaimHazardsUnder(/)", got)
	}
	saysSwap := len(got) > 0 && strings.Contains(got[0], "swap")
	if saysSwap != swapOn {
		t.Errorf("swap listed in /proc/swaps: %v; hazards %q", swapOn, got)
	}
	for _, h := range got {
		if i := strings.Index(h, "(/sys/"); i >= 0 {
			if _, err := os.Stat(strings.TrimSuffix(h[i+1:], ")")); err != nil {
				t.Errorf("hazard %q names a path that is not there: %v", h, err)
			}
		}
	}
}

// TestMemFileHazard: RAM on tmpfs is fine; on a disk file system the
// recorder warns.
func TestMemFileHazard(t *testing.T) {
	shm, err := os.CreateTemp(shmDir(t), "ram")
	if err != nil {
		t.Fatal(err)
	}
	defer shm.Close()
	if h := memFileHazard(shm); h != "" {
		t.Errorf("tmpfs RAM file: %q", h)
	}
	disk, err := os.CreateTemp(diskDir(t), "ram")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(disk.Name())
	defer disk.Close()
	if h := memFileHazard(disk); !strings.Contains(h, "tmpfs") {
		t.Errorf("RAM file on a disk file system: %q", h)
	}
}

// diskDir returns a directory that is on neither tmpfs nor hugetlbfs: the
// test's temporary directory where it is on disk, else /var/tmp, else the
// package's own directory (where go test runs, inside the source tree).
func diskDir(t *testing.T) string {
	t.Helper()
	for _, dir := range []string{t.TempDir(), "/var/tmp", "."} {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err == nil && st.Type != unix.TMPFS_MAGIC && st.Type != unix.HUGETLBFS_MAGIC {
			return dir
		}
	}
	t.Fatal("no directory on a disk file system: the temporary directory, /var/tmp and the source tree are all on tmpfs")
	return ""
}
