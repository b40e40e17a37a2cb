package kvmrec

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// segment is one VMA of the VMM that maps part of the RAM file.
type segment struct {
	addr  uint64 // virtual address in the VMM
	first uint64 // first frame (file offset / pageSize)
	n     uint64 // frames
}

// ramMapping is where the VMM maps the RAM file.
type ramMapping struct {
	segs []segment // by file offset, covering [0, size) without gaps
	size uint64
	dev  uint64
	ino  uint64
}

// findMapping returns the VMAs of process pid that map the file at path,
// checking that they map it shared, whole and once.
func findMapping(pid int, path string) (ramMapping, error) {
	return mappingOf(pid, path, true)
}

// mappingOf is findMapping for shared (a recorded VMM) or private (a VMM
// that restores from the file) mappings.
func mappingOf(pid int, path string, shared bool) (ramMapping, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ramMapping{}, fmt.Errorf("RAM file %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return ramMapping{}, fmt.Errorf("RAM file %s is not a regular file", path)
	}
	m := ramMapping{size: uint64(st.Size), dev: uint64(st.Dev), ino: st.Ino}
	if m.size == 0 || m.size%pageSize != 0 {
		return ramMapping{}, fmt.Errorf("%w: RAM file %s has %d bytes, not a positive multiple of %d", ErrRAMSizeMismatch, path, m.size, pageSize)
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return ramMapping{}, fmt.Errorf("reading the VMM's memory map: %w", err)
	}
	private := false
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		v, ok := parseMapsLine(sc.Text())
		if !ok || v.ino != m.ino || v.major != unix.Major(m.dev) || v.minor != unix.Minor(m.dev) {
			continue
		}
		if v.shared != shared {
			private = !v.shared
			continue
		}
		if v.offset%pageSize != 0 {
			continue
		}
		m.segs = append(m.segs, segment{addr: v.start, first: v.offset / pageSize, n: (v.end - v.start) / pageSize})
	}
	if len(m.segs) == 0 {
		if private {
			return ramMapping{}, fmt.Errorf("%w: the VMM (pid %d) maps %s privately; start QEMU with memory-backend-file,mem-path=%s,share=on", ErrNotMapped, pid, path, path)
		}
		return ramMapping{}, fmt.Errorf("%w: the VMM (pid %d) has not mapped %s; start QEMU with -object memory-backend-file,mem-path=%s,share=on", ErrNotMapped, pid, path, path)
	}
	sort.Slice(m.segs, func(a, b int) bool { return m.segs[a].first < m.segs[b].first })
	next := uint64(0)
	for _, s := range m.segs {
		if s.first != next {
			if s.first < next {
				return ramMapping{}, fmt.Errorf("%w: the VMM (pid %d) maps %s more than once", ErrNotMapped, pid, path)
			}
			break
		}
		next += s.n
	}
	if next*pageSize != m.size {
		return ramMapping{}, fmt.Errorf("%w: the VMM (pid %d) maps %d bytes of %s, the file has %d bytes", ErrRAMSizeMismatch, pid, next*pageSize, path, m.size)
	}
	return m, nil
}

type mapsLine struct {
	start, end, offset uint64
	shared             bool
	major, minor       uint32
	ino                uint64
}

// parseMapsLine parses "start-end perms offset major:minor inode path".
func parseMapsLine(line string) (mapsLine, bool) {
	f := strings.Fields(line)
	if len(f) < 5 {
		return mapsLine{}, false
	}
	var v mapsLine
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok {
		return v, false
	}
	var err1, err2, err3, err4, err5, err6 error
	v.start, err1 = strconv.ParseUint(lo, 16, 64)
	v.end, err2 = strconv.ParseUint(hi, 16, 64)
	v.shared = len(f[1]) == 4 && f[1][3] == 's'
	v.offset, err3 = strconv.ParseUint(f[2], 16, 64)
	ma, mi, ok := strings.Cut(f[3], ":")
	if !ok {
		return v, false
	}
	var a, b uint64
	a, err4 = strconv.ParseUint(ma, 16, 32)
	b, err5 = strconv.ParseUint(mi, 16, 32)
	v.major, v.minor = uint32(a), uint32(b)
	v.ino, err6 = strconv.ParseUint(f[4], 10, 64)
	if errors.Join(err1, err2, err3, err4, err5, err6) != nil || v.end <= v.start {
		return v, false
	}
	return v, true
}

// absPath makes path absolute for messages.
func absPath(path string) string {
	if a, err := filepath.Abs(path); err == nil {
		return a
	}
	return path
}
