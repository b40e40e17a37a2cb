// Package qemuargs reads values out of QEMU command lines, for the packages
// that build or check them (kvmrec starts a recorded QEMU, replay starts
// replays).
package qemuargs

import (
	"errors"
	"strconv"
	"strings"
)

// MemSize parses a -m value: "256" (MiB), "256M", "1G", "size=256M,slots=2".
func MemSize(v string) (uint64, error) {
	s := v
	if strings.Contains(s, "=") {
		s = ""
		for _, p := range strings.Split(v, ",") {
			if size, ok := strings.CutPrefix(p, "size="); ok {
				s = size
			}
		}
		if s == "" {
			return 0, errors.New("no size")
		}
	}
	mult := uint64(1 << 20)
	if len(s) > 0 {
		switch strings.ToUpper(s[len(s)-1:]) {
		case "B":
			mult, s = 1, s[:len(s)-1]
		case "K":
			mult, s = 1<<10, s[:len(s)-1]
		case "M":
			mult, s = 1<<20, s[:len(s)-1]
		case "G":
			mult, s = 1<<30, s[:len(s)-1]
		case "T":
			mult, s = 1<<40, s[:len(s)-1]
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n == 0 {
		return 0, errors.New("not a size")
	}
	return n * mult, nil
}
