package kvmrec

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// QEMU writes its record/replay log through a stdio buffer, and its 12-byte
// header (format version, then 8 reserved bytes) only when it exits. The
// recorder stores the log with the checkpoints as it grows, so that a run
// is self-contained and intervals can be replayed while the recording goes
// on; it writes the header QEMU will write, learned from the same binary,
// in place of the zeros that stand there until then.

const replayLogHeader = 12

// probeReplayHeader returns the header the QEMU binary writes at the start
// of a record/replay log: a machine-less QEMU records nothing and quits.
func probeReplayHeader(ctx context.Context, binary, dir string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	log := filepath.Join(dir, "probe.log")
	defer os.Remove(log)
	cmd := exec.CommandContext(ctx, binary, "-machine", "none", "-display", "none", "-nodefaults",
		"-icount", "shift=auto,rr=record,rrfile="+log, "-qmp", "stdio")
	cmd.Stdin = strings.NewReader(`{"execute":"qmp_capabilities"}` + "\n" + `{"execute":"quit"}` + "\n")
	out := tailbuf.Buffer{Max: 4096}
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("probing %s for its replay log format: %w (%s)", binary, err, out.LastLine())
	}
	b, err := os.ReadFile(log)
	if err != nil {
		return nil, fmt.Errorf("probing %s for its replay log format: %w", binary, err)
	}
	if len(b) < replayLogHeader || bytes.Equal(b[:4], make([]byte, 4)) {
		return nil, fmt.Errorf("probing %s for its replay log format: no header written", binary)
	}
	return b[:replayLogHeader], nil
}

// logFollower hands out what QEMU has appended to its log since the last
// call, the header replaced.
type logFollower struct {
	f      *os.File
	header []byte
	off    int64 // bytes of the log handed out
}

func openLogFollower(path string, header []byte) (*logFollower, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("the replay log: %w", err)
	}
	return &logFollower{f: f, header: header}, nil
}

// next returns the bytes on disk beyond what was returned before.
func (l *logFollower) next() ([]byte, error) {
	fi, err := l.f.Stat()
	if err != nil {
		return nil, fmt.Errorf("the replay log: %w", err)
	}
	size := fi.Size()
	if size <= l.off {
		return nil, nil
	}
	b := make([]byte, size-l.off)
	n, err := l.f.ReadAt(b, l.off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading the replay log: %w", err)
	}
	b = b[:n]
	if l.off < replayLogHeader {
		copy(b, l.header[l.off:min(int64(len(b))+l.off, replayLogHeader)])
	}
	l.off += int64(n)
	return b, nil
}

// reach waits until QEMU's log on disk holds more than offset bytes (the
// log position a checkpoint's device state records, which a replay up to
// that checkpoint reads), for at most limit, and reports whether it does.
// QEMU writes the log through a stdio buffer, so the bytes up to a
// checkpoint's position reach the file when the buffer fills, seconds later
// for an idle guest, or when the working-set plugin flushes QEMU's streams
// at the first translation after the pause (wsplugin.c, maybe_flush).
func (l *logFollower) reach(ctx context.Context, offset uint64, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	for {
		if fi, err := l.f.Stat(); err == nil && uint64(fi.Size()) > offset {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// finish returns the rest of the log once QEMU has exited, and checks the
// header QEMU wrote against the one stored.
func (l *logFollower) finish() ([]byte, error) {
	hdr := make([]byte, replayLogHeader)
	if _, err := l.f.ReadAt(hdr, 0); err != nil {
		return nil, fmt.Errorf("reading the replay log's header: %w", err)
	}
	if !bytes.Equal(hdr, l.header) {
		return nil, fmt.Errorf("QEMU wrote the replay log header %x, the store holds %x", hdr, l.header)
	}
	return l.next()
}

func (l *logFollower) close() {
	if l != nil {
		l.f.Close()
	}
}
