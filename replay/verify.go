package replay

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// verifyChunk is how many frames the verifier reads at once.
const verifyChunk = 256

// frameCheck is the result of a comparison of W_i.
type frameCheck struct {
	compared  uint64 // frames compared
	differing uint64
	first     uint64 // pfn of the first differing frame
}

// verifyFrames compares, frame by frame over runs (W_i), the guest RAM of the
// stopped QEMU pid — its mapping of ramFile, read through /proc/PID/mem —
// with refFile (checkpoint i+1), read with pread. Only W_i's frames are
// read: on the mount the others are holes of <i>.ram, whose reads count as
// misses, and by definition they did not change. It stops early only when
// ctx ends or a read fails.
func verifyFrames(ctx context.Context, pid int, ramFile, refFile string, runs []frameRun, pageSize int64, ramSize uint64) (frameCheck, error) {
	var res frameCheck
	base, err := findMapping(pid, ramFile, ramSize)
	if err != nil {
		return res, err
	}
	mem, err := os.Open("/proc/" + strconv.Itoa(pid) + "/mem")
	if err != nil {
		return res, err
	}
	defer mem.Close()
	ref, err := os.Open(refFile)
	if err != nil {
		return res, err
	}
	defer ref.Close()
	a := make([]byte, verifyChunk*pageSize)
	b := make([]byte, verifyChunk*pageSize)
	for _, r := range runs {
		for done := uint64(0); done < r.Count; {
			if err := ctx.Err(); err != nil {
				return res, err
			}
			n := min(r.Count-done, verifyChunk)
			pfn := r.Start + done
			sz := int(n) * int(pageSize)
			if _, err := mem.ReadAt(a[:sz], int64(base)+int64(pfn)*pageSize); err != nil {
				return res, fmt.Errorf("reading QEMU's RAM at pfn %#x: %v", pfn, err)
			}
			if _, err := ref.ReadAt(b[:sz], int64(pfn)*pageSize); err != nil {
				return res, fmt.Errorf("reading %s at pfn %#x: %v", refFile, pfn, err)
			}
			for k := uint64(0); k < n; k++ {
				lo, hi := int(k)*int(pageSize), int(k+1)*int(pageSize)
				if !bytes.Equal(a[lo:hi], b[lo:hi]) {
					if res.differing == 0 {
						res.first = pfn + k
					}
					res.differing++
				}
			}
			res.compared += n
			done += n
		}
	}
	return res, nil
}

// findMapping returns the start address of pid's mapping of path at file
// offset 0 that covers at least size bytes. The mapping is found by path
// (as given, or with symbolic links resolved) or, failing that, by inode.
func findMapping(pid int, path string, size uint64) (uint64, error) {
	names := map[string]bool{filepath.Clean(path): true}
	if p, err := filepath.EvalSymlinks(path); err == nil {
		names[p] = true
	}
	var ino uint64
	if st, err := os.Stat(path); err == nil {
		if s, ok := st.Sys().(*syscall.Stat_t); ok {
			ino = s.Ino
		}
	}
	mapsPath := "/proc/" + strconv.Itoa(pid) + "/maps"
	f, err := os.Open(mapsPath)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var byInode uint64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// start-end perms offset dev inode path
		fields := strings.SplitN(sc.Text(), " ", 6)
		if len(fields) < 6 {
			continue
		}
		name := strings.TrimSpace(fields[5])
		if off, err := strconv.ParseUint(fields[2], 16, 64); err != nil || off != 0 {
			continue
		}
		se := strings.SplitN(fields[0], "-", 2)
		if len(se) != 2 {
			continue
		}
		start, err1 := strconv.ParseUint(se[0], 16, 64)
		end, err2 := strconv.ParseUint(se[1], 16, 64)
		if err1 != nil || err2 != nil || end-start < size {
			continue
		}
		if names[name] {
			return start, nil
		}
		if n, err := strconv.ParseUint(fields[4], 10, 64); err == nil && ino != 0 && n == ino &&
			filepath.Base(name) == filepath.Base(path) && byInode == 0 {
			byInode = start
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("%s: %v", mapsPath, err)
	}
	if byInode != 0 {
		return byInode, nil
	}
	return 0, fmt.Errorf("QEMU (pid %d) has no mapping of %s of %d bytes in %s", pid, path, size, mapsPath)
}
