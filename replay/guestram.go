package replay

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// guestRAMRss returns the resident size of the mappings of pid whose file
// ends in ".ram" under mount: a replaying QEMU's guest RAM. It is the
// figure sparse replays save on (QEMU's own memory, its translation cache
// and heap, is the same from either file), and the one that matches W/RAM.
func guestRAMRss(pid int, mount string) (uint64, bool) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, false
	}
	defer f.Close()
	prefix := strings.TrimSuffix(mount, "/") + "/"
	var sum uint64
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Bytes()
		if isSmapsHeader(line) {
			fields := strings.Fields(string(line))
			in = len(fields) >= 6 && strings.HasPrefix(fields[5], prefix) && strings.HasSuffix(fields[len(fields)-1], ".ram")
			continue
		}
		if in && bytes.HasPrefix(line, []byte("Rss:")) {
			f := strings.Fields(string(line[4:]))
			if len(f) > 0 {
				kb, _ := strconv.ParseUint(f[0], 10, 64)
				sum += kb * 1024
			}
		}
	}
	return sum, sc.Err() == nil
}
