package index

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

// TestPebbleLinesAreOneLine: Pebble's error and fatal lines (a full disk
// ends in a fatal WAL error) come out as one line each, without the details
// and stack traces after the first line, and a repeated error line is
// logged once a minute, not every time.
func TestPebbleLinesAreOneLine(t *testing.T) {
	logger, logged := newCountingLogger()
	h := newHealth(logger)
	q := quietLogger{logger, h}
	multi := "pebble: flush error: write 000012.sst: no space left on device\n(1) attached stack trace\n  -- stack trace:\n  | main.go:12"
	for i := 0; i < 5; i++ {
		q.Errorf("[JOB %d] %s", i, multi)
		h.backgroundError(errors.New(multi))
	}
	n, lines := logged()
	if n != 2 {
		t.Fatalf("%d records for 5 repeated errors of two kinds: %q", n, lines)
	}
	for _, l := range lines {
		if strings.Contains(l, "\n") || strings.Contains(l, "stack") {
			t.Fatalf("multi-line record %q", l)
		}
	}

	var out bytes.Buffer
	code := -1
	oldOut, oldExit := fatalOut, fatalExit
	fatalOut, fatalExit = &out, func(c int) { code = c }
	defer func() { fatalOut, fatalExit = oldOut, oldExit }()
	q.Fatalf("pebble: fatal commit error: %s", multi)
	if code != 1 || strings.Count(out.String(), "\n") != 1 || strings.Contains(out.String(), "stack") {
		t.Fatalf("Fatalf: exit %d, wrote %q", code, out.String())
	}
	if n2, _ := logged(); n2 != n {
		t.Fatal("Fatalf logged a record besides its line")
	}
}
