package storeapi

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
)

// The export body (ContentExtents) is a series of records, each a 16-byte
// header of two big-endian uint64, offset and length, then length bytes of
// the image at offset. Records come in no particular order; bytes of the
// image that no record carries are holes (zeros). The last record has
// length 0: its offset is the image's size, or, when it is errorOffset,
// one line of JSON with an Error follows (the export failed midway).
const errorOffset = ^uint64(0)

// maxExtent bounds one record, so that a damaged stream cannot make the
// reader allocate without limit.
const maxExtent = 64 << 20

// ExtentWriter writes an export body. WriteAt may be called from several
// goroutines.
type ExtentWriter struct {
	mu      sync.Mutex
	w       io.Writer
	flush   func()
	started bool
}

// NewExtentWriter writes records to w; flush, if not nil, is called after
// each one (an http.Flusher's Flush).
func NewExtentWriter(w io.Writer, flush func()) *ExtentWriter {
	return &ExtentWriter{w: w, flush: flush}
}

// Started tells whether a record was written: after that an error can only
// go in the body (Fail).
func (e *ExtentWriter) Started() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.started
}

// WriteAt writes p as the bytes at off.
func (e *ExtentWriter) WriteAt(p []byte, off int64) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := e.record(uint64(off), p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the body with the image's size.
func (e *ExtentWriter) Close(size uint64) error { return e.record(size, nil) }

// Fail ends the body with an error.
func (e *ExtentWriter) Fail(apiErr *Error) error {
	data, _ := json.Marshal(apiErr)
	return e.record(errorOffset, nil, append(data, '\n')...)
}

func (e *ExtentWriter) record(off uint64, p []byte, trailer ...byte) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.started = true
	var h [16]byte
	binary.BigEndian.PutUint64(h[:8], off)
	binary.BigEndian.PutUint64(h[8:], uint64(len(p)))
	for _, b := range [][]byte{h[:], p, trailer} {
		if _, err := e.w.Write(b); err != nil {
			return err
		}
	}
	if e.flush != nil && (p == nil || len(p) >= 1<<20) {
		e.flush()
	}
	return nil
}

// ReadExtents reads an export body from r into w and returns the image's
// size. A body that ends before its last record gives io.ErrUnexpectedEOF;
// an export that failed gives its *Error.
func ReadExtents(r io.Reader, w io.WriterAt) (uint64, error) {
	br := bufio.NewReaderSize(r, 1<<20)
	buf := make([]byte, 0, 1<<20)
	var h [16]byte
	for {
		if _, err := io.ReadFull(br, h[:]); err != nil {
			return 0, unexpected(err)
		}
		off, n := binary.BigEndian.Uint64(h[:8]), binary.BigEndian.Uint64(h[8:])
		switch {
		case n == 0 && off == errorOffset:
			line, err := readLine(br, 1<<16)
			if err != nil {
				return 0, unexpected(err)
			}
			var apiErr Error
			if err := json.Unmarshal(line, &apiErr); err != nil || apiErr.Code == "" {
				return 0, fmt.Errorf("export stream: bad error record %q", line)
			}
			return 0, &apiErr
		case n == 0:
			return off, nil
		case n > maxExtent || off > 1<<62:
			return 0, fmt.Errorf("export stream: record of %d bytes at %d is out of bounds", n, off)
		}
		if uint64(cap(buf)) < n {
			buf = make([]byte, n)
		}
		buf = buf[:n]
		if _, err := io.ReadFull(br, buf); err != nil {
			return 0, unexpected(err)
		}
		if _, err := w.WriteAt(buf, int64(off)); err != nil {
			return 0, err
		}
	}
}

func unexpected(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}
