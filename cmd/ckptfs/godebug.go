package main

import (
	"os"
	"slices"
	"strings"
	"syscall"
)

// servingCommands are the commands whose process serves a mount.
var servingCommands = []string{"mount", "demo", "record"}

// reexecForMount re-executes a process that will serve a mount with
// GODEBUG=madvdontneed=0 added, which the Go runtime reads only at start.
// The runtime then hands freed memory back with MADV_FREE instead of
// MADV_DONTNEED: the kernel takes the pages only under memory pressure,
// and until then the heap reuses them without a page fault. A mount cycles
// its block cache with every cold read, and the runtime kept returning and
// faulting in the same memory: 80,000-88,000 page faults in the mount
// during one replay bench, 17,000-19,000 with it, and (c) 52 ms instead of
// 58 ms (medians of five alternating runs). The price: the process's RSS
// counts freed memory until the kernel reclaims it. An explicit
// madvdontneed setting wins; if the re-exec fails, the process runs on.
func reexecForMount() {
	if strings.Contains(os.Getenv("GODEBUG"), "madvdontneed=") {
		return
	}
	if !slices.ContainsFunc(os.Args[1:], func(a string) bool { return slices.Contains(servingCommands, a) }) {
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
