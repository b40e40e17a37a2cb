package main

import (
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
)

// reexecForMount re-executes a process that will serve a mount (servesMount) with
// GODEBUG=madvdontneed=0 added, which the Go runtime reads only at start.
// The runtime then hands freed memory back with MADV_FREE instead of
// MADV_DONTNEED: the kernel takes the pages only under memory pressure,
// and until then the heap reuses them without a page fault. A mount cycles
// its block cache with every cold read; with MADV_DONTNEED the runtime
// returns that memory near its limit and the mount faults the same pages in
// again (docs/DECISIONS.md has the comparison). The price: the process's
// RSS counts freed memory until the kernel reclaims it. Under record
// --mount the recorder shares the process and the setting. An explicit
// madvdontneed setting wins; if the re-exec fails, the process runs on.
func reexecForMount() {
	if strings.Contains(os.Getenv("GODEBUG"), "madvdontneed=") {
		return
	}
	if !servesMount(newApp(nil, io.Discard, io.Discard), os.Args) {
		return
	}
	exe, err := os.Executable()
	if err != nil {
		return
	}
	gd := "madvdontneed=0"
	if old := os.Getenv("GODEBUG"); old != "" {
		gd = old + "," + gd
	}
	env := append(slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, "GODEBUG=") }), "GODEBUG="+gd)
	_ = syscall.Exec(exe, os.Args, env)
}
