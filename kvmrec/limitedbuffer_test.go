package kvmrec

import (
	"fmt"
	"strings"
	"testing"
)

func TestLimitedBuffer(t *testing.T) {
	var b limitedBuffer
	fmt.Fprintln(&b, "ckptfs-ws: userfaultfd: Operation not permitted; working sets keep fault-around")
	fmt.Fprintln(&b, "qemu-system-x86_64: Expected vmdescription section, but got 0")
	if got := b.linesWith("ckptfs-ws:"); len(got) != 1 || !strings.Contains(got[0], "fault-around") {
		t.Errorf("linesWith: %q", got)
	}
	if got := b.lastLine(); !strings.Contains(got, "vmdescription") {
		t.Errorf("lastLine: %q", got)
	}
	fmt.Fprint(&b, strings.Repeat("x", 5000)+"\nthe end\n")
	if len(b.buf) > 4096 || b.lastLine() != "the end" || len(b.linesWith("ckptfs-ws:")) != 0 {
		t.Errorf("after 5 KB: %d bytes kept, last line %q", len(b.buf), b.lastLine())
	}
}
