package tailbuf

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestLimit(t *testing.T) {
	b := Buffer{Max: 4096}
	fmt.Fprintln(&b, "ckptfs-ws: userfaultfd: Operation not permitted; working sets keep fault-around")
	fmt.Fprintln(&b, "qemu-system-x86_64: Expected vmdescription section, but got 0")
	if got := b.LinesWith("ckptfs-ws:"); len(got) != 1 || !strings.Contains(got[0], "fault-around") {
		t.Errorf("LinesWith: %q", got)
	}
	if got := b.LastLine(); !strings.Contains(got, "vmdescription") {
		t.Errorf("LastLine: %q", got)
	}
	fmt.Fprint(&b, strings.Repeat("x", 5000)+"\nthe end\n")
	if n := len(b.String()); n != 4096 {
		t.Errorf("after 5 KB: %d bytes kept, want 4096", n)
	}
	if b.LastLine() != "the end" || len(b.LinesWith("ckptfs-ws:")) != 0 {
		t.Errorf("after 5 KB: last line %q, ckptfs-ws lines %q", b.LastLine(), b.LinesWith("ckptfs-ws:"))
	}
}

func TestUnlimited(t *testing.T) {
	var b Buffer
	long := strings.Repeat("y", 100000)
	fmt.Fprint(&b, long)
	if b.String() != long {
		t.Errorf("the zero Buffer kept %d of %d bytes", len(b.String()), len(long))
	}
}

func TestLastLines(t *testing.T) {
	var b Buffer
	if b.LastLine() != "" || b.LastLines(3) != "" {
		t.Errorf("empty buffer: LastLine %q, LastLines %q", b.LastLine(), b.LastLines(3))
	}
	fmt.Fprint(&b, "\n  one\ntwo\nthree\nfour\n\n")
	if got := b.LastLines(3); got != "two | three | four" {
		t.Errorf("LastLines(3) = %q", got)
	}
	if got := b.LastLines(10); got != "one | two | three | four" {
		t.Errorf("LastLines(10) = %q", got)
	}
}

// TestConcurrent writes from several goroutines while reading; run with
// -race it fails if a method skips the lock.
func TestConcurrent(t *testing.T) {
	b := Buffer{Max: 100}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				fmt.Fprintf(&b, "line %d\n", i)
			}
		}()
	}
	for i := 0; i < 1000; i++ {
		_ = b.LastLine()
	}
	wg.Wait()
	if n := len(b.String()); n != 100 {
		t.Errorf("%d bytes kept, want 100", n)
	}
	if got := b.LastLine(); got != "line 999" {
		t.Errorf("LastLine = %q, want line 999", got)
	}
}
