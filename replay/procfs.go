package replay

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// memAvailable returns MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, error) {
	proc, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, err
	}
	mi, err := proc.Meminfo()
	if err != nil {
		return 0, err
	}
	if mi.MemAvailableBytes == nil {
		return 0, errors.New("no MemAvailable in /proc/meminfo")
	}
	return *mi.MemAvailableBytes, nil
}

// procStatus holds the memory lines of /proc/self/status, in bytes.
type procStatus struct {
	rss, anon, file, shmem int64
}

func readStatus() (procStatus, error) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return procStatus{}, err
	}
	var st procStatus
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		var dst *int64
		switch key {
		case "VmRSS":
			dst = &st.rss
		case "RssAnon":
			dst = &st.anon
		case "RssFile":
			dst = &st.file
		case "RssShmem":
			dst = &st.shmem
		default:
			continue
		}
		*dst = parseKB(val)
	}
	return st, nil
}

// parseKB parses " 1234 kB" into bytes.
func parseKB(s string) int64 {
	f := strings.Fields(s)
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseInt(f[0], 10, 64)
	return v * 1024
}

// regionRss returns the Rss of the mapping that starts at m, from
// /proc/self/smaps.
func regionRss(m []byte) (uint64, error) {
	if len(m) == 0 {
		return 0, nil
	}
	data, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		return 0, err
	}
	start := fmt.Sprintf("%x-", uintptrOf(m))
	in := false
	for _, line := range bytes.Split(data, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if isSmapsHeader(line) {
			in = bytes.HasPrefix(line, []byte(start))
			continue
		}
		if in && bytes.HasPrefix(line, []byte("Rss:")) {
			return uint64(parseKB(string(line[len("Rss:"):]))), nil
		}
	}
	return 0, fmt.Errorf("mapping at %s not in /proc/self/smaps", start)
}

// isSmapsHeader reports whether a smaps line starts a mapping ("start-end perms ...").
func isSmapsHeader(line []byte) bool {
	dash := bytes.IndexByte(line, '-')
	if dash <= 0 {
		return false
	}
	for _, c := range line[:dash] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// procStatusKB returns a "kB" field of /proc/PID/status in bytes.
func procStatusKB(pid int, field string) (uint64, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(data), "\n") {
		v, ok := strings.CutPrefix(line, field+":")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			return 0, false
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, false
		}
		return n << 10, true
	}
	return 0, false
}
