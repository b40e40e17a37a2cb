package rawfmt

import (
	"context"
	"errors"
	"fmt"
	"io"
)

// ReadDump reads a raw RAM image from r and calls fn for every frame in
// order. buf (a multiple of PageSize, at least one page) is the read buffer.
// A length that is not a multiple of PageSize is an error. It returns the
// number of bytes read.
func ReadDump(ctx context.Context, r io.Reader, buf []byte, fn func(pfn uint64, frame []byte) error, progress func(uint64)) (uint64, error) {
	if len(buf) < PageSize || len(buf)%PageSize != 0 {
		return 0, fmt.Errorf("%w: read buffer of %d bytes", ErrBadInput, len(buf))
	}
	var done uint64
	for {
		if err := ctx.Err(); err != nil {
			return done, fmt.Errorf("interrupted: %w", err)
		}
		n, err := io.ReadFull(r, buf)
		if n%PageSize != 0 {
			return done, fmt.Errorf("%w: dump ends in a partial frame (%d bytes after frame %d)", ErrBadInput, n%PageSize, (done+uint64(n))/PageSize)
		}
		for off := 0; off < n; off += PageSize {
			if ferr := fn((done+uint64(off))/PageSize, buf[off:off+PageSize]); ferr != nil {
				return done, ferr
			}
		}
		done += uint64(n)
		if progress != nil {
			progress(done)
		}
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return done, nil
		}
		if err != nil {
			return done, fmt.Errorf("%w: reading dump: %v", ErrBadInput, err)
		}
	}
}
