package storeapi

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/ckptfs/ckptfs/index"
)

// The import body (ContentImport):
//
//	one line of JSON, an ImportHeader, ended by '\n'
//	Dumps raw RAM images of RAMSize bytes each, back to back
//
// The working sets come first so that the owner checks all of them before
// it writes anything; the dumps are read as they arrive.

// maxImportHeader bounds the header line (working sets in list format).
const maxImportHeader = 64 << 20

// WriteImportHeader writes h as the first line of an import body.
func WriteImportHeader(w io.Writer, h ImportHeader) error {
	data, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = w.Write(append(data, '\n'))
	return err
}

// ReadImportHeader reads and checks an import body's header line and parses
// its working sets. The dumps follow in r.
func ReadImportHeader(r *bufio.Reader) (ImportHeader, []*roaring.Bitmap, error) {
	var h ImportHeader
	line, err := readLine(r, maxImportHeader)
	if err != nil {
		return h, nil, &Error{Code: CodeBadRequest, Message: "import body: " + err.Error()}
	}
	if err := json.Unmarshal(line, &h); err != nil {
		return h, nil, &Error{Code: CodeBadRequest, Message: "import header: " + err.Error()}
	}
	if h.RAMSize == 0 || h.RAMSize%index.PageSize != 0 || h.Dumps <= 0 {
		return h, nil, &Error{Code: CodeBadRequest, Message: fmt.Sprintf("import header: ram_size %d and dumps %d: want a positive multiple of %d and at least one dump", h.RAMSize, h.Dumps, index.PageSize)}
	}
	if h.WorkingSets == nil {
		return h, nil, nil
	}
	if len(h.WorkingSets) != h.Dumps-1 {
		return h, nil, &Error{Code: CodeBadRequest, Message: fmt.Sprintf("import header: %d working sets for %d dumps (want %d)", len(h.WorkingSets), h.Dumps, h.Dumps-1)}
	}
	wss := make([]*roaring.Bitmap, len(h.WorkingSets))
	for i, l := range h.WorkingSets {
		if wss[i], err = index.ParseList([]byte(l), h.RAMSize/index.PageSize); err != nil {
			return h, nil, fmt.Errorf("working set %d: %w", i, err)
		}
	}
	return h, wss, nil
}

// readLine reads one line of at most max bytes, without its '\n'.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		part, err := r.ReadSlice('\n')
		line = append(line, part...)
		if len(line) > max {
			return nil, fmt.Errorf("line longer than %d bytes", max)
		}
		switch err {
		case nil:
			return line[:len(line)-1], nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			return nil, io.ErrUnexpectedEOF
		default:
			return nil, err
		}
	}
}
