package fs

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// callerMaps reports whether the process that sent the request in ctx has
// a mapping of the file with inode number ino whose path ends in suffix.
// A READ of a hole from such a process is a page fault (or the kernel's
// read-around for one), which the kernel retries when refused; a READ from
// any other process is read(2), which is not retried and must be served.
func callerMaps(ctx context.Context, ino uint64, suffix string) bool {
	caller, ok := fuse.FromContext(ctx)
	if !ok || caller.Pid == 0 {
		return false
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", caller.Pid))
	if err != nil {
		return false
	}
	defer f.Close()
	want := strconv.FormatUint(ino, 10)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// addr perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && fields[4] == want && strings.HasSuffix(fields[5], suffix) {
			return true
		}
	}
	return false
}

// caller names the process that sent the request in ctx, for logs: its
// thread id and command name (empty when it has gone).
func caller(ctx context.Context) (uint32, string) {
	c, ok := fuse.FromContext(ctx)
	if !ok {
		return 0, ""
	}
	comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c.Pid))
	return c.Pid, strings.TrimSpace(string(comm))
}
