package index

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"unsafe"

	"github.com/cockroachdb/pebble/v2/objstorage"
	"golang.org/x/sys/unix"
)

// Frame tables are written with O_DIRECT. On this kind of machine a buffered
// write costs the kernel a fresh page-cache page per 4 KiB, and under memory
// churn (a running guest, the recorder's staging chunks) that was most of the
// store's time: a 512 MiB dd took 0.33-2.0 s buffered with 0.2-1.8 s of
// system time, against 0.31-0.39 s and 0.1 s with O_DIRECT. A frame table is
// written once, in order, and read back only when a checkpoint is served, so
// the page cache gains nothing by holding it at write time.

// directBufSize is the unit of one direct write; two are in use per table,
// one being filled while the other is on its way to the disk.
const directBufSize = 4 << 20

// directAlign is the alignment O_DIRECT asks of offsets, lengths and memory
// on every file system ckptfs expects (the logical block size is at most
// this).
const directAlign = 4096

// directBufs recycles direct-write buffers across tables: a fresh buffer
// costs a page fault per 4 KiB on its first fill.
var directBufs = sync.Pool{New: func() any {
	b := make([]byte, directBufSize+directAlign)
	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}
	return b[off : off+directBufSize : off+directBufSize]
}}

// directWritable is an objstorage.Writable that writes a new file with
// O_DIRECT: full aligned buffers while the table grows, the zero-padded tail
// at Finish, then a truncate to the true size and an fsync.
type directWritable struct {
	f    *os.File
	path string
	off  int64  // file offset of buf[0]
	buf  []byte // being filled; len is the fill
	// inflight carries the result of the one write in flight, if any,
	// and the buffer it wrote.
	inflight chan directDone
	err      error
}

type directDone struct {
	buf []byte
	err error
}

// createDirect creates path for a direct-written table. ok is false (and
// err nil) when the file system refuses O_DIRECT; the caller then writes
// through the page cache.
func createDirect(path string) (w *directWritable, ok bool, err error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_DIRECT|unix.O_CLOEXEC, 0o600)
	if errors.Is(err, unix.EINVAL) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("creating %s: %w", path, err)
	}
	w = &directWritable{f: os.NewFile(uintptr(fd), path), path: path,
		buf: directBufs.Get().([]byte)[:0]}
	return w, true, nil
}

var _ objstorage.Writable = (*directWritable)(nil)

// Write copies p into the buffer and sends each full buffer to the disk.
func (w *directWritable) Write(p []byte) error {
	for len(p) > 0 && w.err == nil {
		n := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+n]
		p = p[n:]
		if len(w.buf) == cap(w.buf) {
			w.submit()
		}
	}
	return w.err
}

// submit starts writing the full buffer and continues in a free one. At
// most one write is in flight: waiting for it here is what keeps the
// writer at the disk's pace.
func (w *directWritable) submit() {
	w.wait()
	if w.err != nil {
		return
	}
	next := directBufs.Get().([]byte)[:0]
	buf, off := w.buf, w.off
	w.inflight = make(chan directDone, 1)
	go func(ch chan<- directDone) {
		ch <- directDone{buf: buf, err: pwriteAll(w.f, buf, off)}
	}(w.inflight)
	w.off += int64(len(buf))
	w.buf = next
}

// wait ends the write in flight.
func (w *directWritable) wait() {
	if w.inflight == nil {
		return
	}
	done := <-w.inflight
	w.inflight = nil
	directBufs.Put(done.buf[:cap(done.buf)])
	if done.err != nil && w.err == nil {
		w.err = done.err
	}
}

func pwriteAll(f *os.File, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := f.WriteAt(b, off)
		if err != nil {
			return err // an *os.PathError: "write PATH: no space left on device"
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

// Finish writes the tail (padded to the alignment, then truncated away) and
// makes the file durable.
func (w *directWritable) Finish() error {
	w.wait()
	if w.err == nil && len(w.buf) > 0 {
		n := len(w.buf)
		padded := (n + directAlign - 1) &^ (directAlign - 1)
		clear(w.buf[n:padded])
		if err := pwriteAll(w.f, w.buf[:padded], w.off); err != nil {
			w.err = err
		} else if padded != n {
			if err := w.f.Truncate(w.off + int64(n)); err != nil {
				w.err = fmt.Errorf("truncating %s: %w", w.path, err)
			}
		}
		w.off += int64(n)
	}
	if w.err == nil {
		if err := w.f.Sync(); err != nil {
			w.err = fmt.Errorf("syncing %s: %w", w.path, err)
		}
	}
	w.release()
	if err := w.f.Close(); err != nil && w.err == nil {
		w.err = fmt.Errorf("closing %s: %w", w.path, err)
	}
	return w.err
}

// Abort gives up the table; the caller removes the file.
func (w *directWritable) Abort() {
	w.wait()
	w.release()
	_ = w.f.Close()
}

func (w *directWritable) release() {
	if w.buf != nil {
		directBufs.Put(w.buf[:cap(w.buf)])
		w.buf = nil
	}
}
