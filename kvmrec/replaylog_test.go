package kvmrec

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestLogFollower: the follower hands out what was appended, with the
// header QEMU writes only at exit put in place, and reach waits for the
// log to pass an offset, up to its limit.
func TestLogFollower(t *testing.T) {
	path := filepath.Join(t.TempDir(), "replay.log")
	// QEMU leaves zeros where its header will be until it exits.
	if err := os.WriteFile(path, append(make([]byte, replayLogHeader), "abc"...), 0o600); err != nil {
		t.Fatal(err)
	}
	header := []byte("HEADER-12345")
	l, err := openLogFollower(path, header)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	b, err := l.next()
	if err != nil || !bytes.Equal(b, append(append([]byte(nil), header...), "abc"...)) {
		t.Fatalf("next: %q, %v", b, err)
	}
	ctx := context.Background()
	if !l.reach(ctx, replayLogHeader+2, time.Second) {
		t.Errorf("reach: the log holds offset %d", replayLogHeader+2)
	}
	t0 := time.Now()
	if l.reach(ctx, replayLogHeader+3, 50*time.Millisecond) {
		t.Errorf("reach: the log does not hold offset %d yet", replayLogHeader+3)
	}
	if d := time.Since(t0); d < 50*time.Millisecond {
		t.Errorf("reach gave up after %s, before its limit", d)
	}
	go func() {
		time.Sleep(20 * time.Millisecond)
		f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		f.Write([]byte("de"))
		f.Close()
	}()
	if !l.reach(ctx, replayLogHeader+4, 5*time.Second) {
		t.Errorf("reach did not see the appended bytes")
	}
	if b, err := l.next(); err != nil || string(b) != "de" {
		t.Errorf("next after the append: %q, %v", b, err)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if l.reach(canceled, 1<<20, time.Minute) {
		t.Errorf("reach with a canceled context")
	}
}
