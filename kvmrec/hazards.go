package kvmrec

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// memFileHazard says why the RAM file's file system blurs the pagemap
// tracker, or "" on tmpfs and hugetlbfs. On a disk file system page-out
// writes guest frames to disk and evicts them (the guest then faults them
// back in from disk), and large page-cache folios are mapped whole, so a
// working set grows to whole folios.
func memFileHazard(f *os.File) string {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(f.Fd()), &st); err != nil {
		return ""
	}
	switch st.Type {
	case unix.TMPFS_MAGIC, unix.HUGETLBFS_MAGIC:
		return ""
	}
	return "the RAM file is not on tmpfs or hugetlbfs (e.g. /dev/shm): page-out sends frames to disk and working sets grow to whole page-cache folios"
}

// reclaimHazards lists what on this machine may unmap guest RAM behind the
// pagemap tracker's back during an interval (see doc.go, "Assumptions"):
// swap, and DAMON schemes that page memory out.
func reclaimHazards() []string { return reclaimHazardsUnder("/") }

// reclaimHazardsUnder is reclaimHazards for a machine whose /proc and /sys
// are under root (tests lay out their own).
func reclaimHazardsUnder(root string) []string {
	var out []string
	if b, err := os.ReadFile(filepath.Join(root, "proc/swaps")); err == nil {
		if lines := strings.Split(strings.TrimSpace(string(b)), "\n"); len(lines) > 1 {
			out = append(out, "swap is enabled: reclaim may swap guest RAM out during an interval")
		}
	}
	kd, _ := filepath.Glob(filepath.Join(root, "sys/kernel/mm/damon/admin/kdamonds/*"))
	for _, d := range kd {
		st, err := os.ReadFile(filepath.Join(d, "state"))
		if err != nil || strings.TrimSpace(string(st)) != "on" {
			continue
		}
		actions, _ := filepath.Glob(filepath.Join(d, "contexts", "*", "schemes", "*", "action"))
		for _, a := range actions {
			if b, err := os.ReadFile(a); err == nil && strings.TrimSpace(string(b)) == "pageout" && !onlyUnmapped(filepath.Dir(a)) {
				scheme, _ := filepath.Rel(root, filepath.Dir(a))
				out = append(out, "a DAMON scheme pages out memory it finds idle (/"+scheme+")")
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(root, "sys/module/damon_reclaim/parameters/enabled")); err == nil && strings.TrimSpace(string(b)) == "Y" {
		out = append(out, "DAMON_RECLAIM is enabled")
	}
	return out
}

// onlyUnmapped reports whether a DAMON scheme's last ops filter lets only
// unmapped pages through: pages that match no filter get the opposite of
// the last filter's verdict, so mapped guest RAM is never paged out.
func onlyUnmapped(scheme string) bool {
	read := func(p string) string {
		b, _ := os.ReadFile(p)
		return strings.TrimSpace(string(b))
	}
	n := read(filepath.Join(scheme, "ops_filters", "nr_filters"))
	if n == "" || n == "0" {
		return false
	}
	last := filepath.Join(scheme, "ops_filters", strconv.Itoa(atoi(n)-1))
	return read(filepath.Join(last, "type")) == "unmapped" && read(filepath.Join(last, "matching")) == "Y" &&
		read(filepath.Join(last, "allow")) == "Y"
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
