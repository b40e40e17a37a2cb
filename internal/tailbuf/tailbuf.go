// Package tailbuf keeps the output of a child process (QEMU, a helper) for
// error messages and tests. The process's output goroutine writes while the
// caller reads, so every method takes a lock; a limit keeps only the end of
// a long output, where the cause of a failure is.
package tailbuf

import (
	"strings"
	"sync"
)

// Buffer is an io.Writer that keeps the last Max bytes written to it, or
// everything when Max is 0. The zero value keeps everything. Its methods
// may be called concurrently.
type Buffer struct {
	Max int

	mu  sync.Mutex
	buf []byte
}

// Write appends p, dropping the oldest bytes beyond Max. It never fails.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if b.Max > 0 && len(b.buf) > b.Max {
		// Copy, so that the dropped bytes are freed.
		b.buf = append([]byte(nil), b.buf[len(b.buf)-b.Max:]...)
	}
	return len(p), nil
}

// String returns the bytes kept.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

// lines splits the output without its leading and trailing white space.
func (b *Buffer) lines() []string {
	return strings.Split(strings.TrimSpace(b.String()), "\n")
}

// LastLine returns the last non-empty line, trimmed; "" when nothing but
// white space was written.
func (b *Buffer) LastLine() string {
	l := b.lines()
	return strings.TrimSpace(l[len(l)-1])
}

// LastLines returns up to n last lines, joined with " | " to fit in a
// one-line error message.
func (b *Buffer) LastLines(n int) string {
	l := b.lines()
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, " | ")
}

// LinesWith returns the lines that start with prefix, trimmed.
func (b *Buffer) LinesWith(prefix string) []string {
	var out []string
	for _, l := range b.lines() {
		if strings.HasPrefix(l, prefix) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}
