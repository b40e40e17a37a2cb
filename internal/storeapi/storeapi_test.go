package storeapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/index"
)

// memAt is an io.WriterAt into memory.
type memAt struct{ b []byte }

func (m *memAt) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(m.b) {
		m.b = append(m.b, make([]byte, end-len(m.b))...)
	}
	return copy(m.b[off:], p), nil
}

func TestExtentsRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	ew := NewExtentWriter(&buf, nil)
	if ew.Started() {
		t.Fatal("started before any record")
	}
	ew.WriteAt([]byte("world"), 4096)
	ew.WriteAt([]byte("hello"), 0)
	ew.Close(3 * 4096)
	var got memAt
	size, err := ReadExtents(bytes.NewReader(buf.Bytes()), &got)
	if err != nil || size != 3*4096 {
		t.Fatalf("ReadExtents: %d, %v", size, err)
	}
	if string(got.b[:5]) != "hello" || string(got.b[4096:4101]) != "world" || len(got.b) != 4101 {
		t.Fatalf("image: %q ... %q (%d bytes)", got.b[:5], got.b[4096:], len(got.b))
	}
	// Cut anywhere before the last record: unexpected EOF, never success.
	for n := 0; n < buf.Len(); n++ {
		if _, err := ReadExtents(bytes.NewReader(buf.Bytes()[:n]), &memAt{}); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("stream cut at %d: %v", n, err)
		}
	}
}

func TestExtentsFailure(t *testing.T) {
	var buf bytes.Buffer
	ew := NewExtentWriter(&buf, nil)
	ew.WriteAt([]byte("x"), 0)
	ew.Fail(ErrorFor(fmt.Errorf("reading: %w", index.ErrCorrupt)))
	_, err := ReadExtents(&buf, &memAt{})
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.Code != CodeCorrupt || !errors.Is(err, index.ErrCorrupt) {
		t.Fatalf("failed export: %v", err)
	}
	// A record longer than any the writer makes is refused, not allocated.
	bad := append(make([]byte, 8), 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0)
	if _, err := ReadExtents(bytes.NewReader(bad), &memAt{}); err == nil || !strings.Contains(err.Error(), "out of bounds") {
		t.Fatalf("huge record: %v", err)
	}
}

func TestImportHeader(t *testing.T) {
	var buf bytes.Buffer
	h := ImportHeader{RAMSize: 8 * index.PageSize, Dumps: 3, WorkingSets: []string{"0-3\n", "7"}}
	if err := WriteImportHeader(&buf, h); err != nil {
		t.Fatal(err)
	}
	buf.WriteString("DUMPS")
	r := bufio.NewReader(&buf)
	got, wss, err := ReadImportHeader(r)
	if err != nil || got.Dumps != 3 || len(wss) != 2 || wss[0].GetCardinality() != 4 || !wss[1].Contains(7) {
		t.Fatalf("ReadImportHeader: %+v %v %v", got, wss, err)
	}
	if rest, _ := io.ReadAll(r); string(rest) != "DUMPS" {
		t.Fatalf("the dumps after the header: %q", rest)
	}
	for _, tc := range []struct {
		body string
		code Code
		msg  string
	}{
		{"", CodeBadRequest, "unexpected EOF"},
		{"{not json}\n", CodeBadRequest, "import header"},
		{`{"ram_size":4097,"dumps":1}` + "\n", CodeBadRequest, "positive multiple"},
		{`{"ram_size":4096,"dumps":0}` + "\n", CodeBadRequest, "at least one dump"},
		{`{"ram_size":4096,"dumps":2,"working_sets":[]}` + "\n", CodeBadRequest, "want 1"},
		{`{"ram_size":4096,"dumps":2,"working_sets":["1"]}` + "\n", CodeBadInput, "working set 0"},
	} {
		_, _, err := ReadImportHeader(bufio.NewReader(strings.NewReader(tc.body)))
		if e := ErrorFor(err); err == nil || e.Code != tc.code || !strings.Contains(e.Message, tc.msg) {
			t.Errorf("header %q: %v (code %s); want %s with %q", tc.body, err, e.Code, tc.code, tc.msg)
		}
	}
}

// TestErrorCodes: index errors keep their identity across the wire.
func TestErrorCodes(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code Code
	}{
		{fmt.Errorf("%w: %q", index.ErrRunNotFound, "x"), CodeRunNotFound},
		{index.ErrRunRemoved, CodeRunNotFound},
		{fmt.Errorf("%w: %q", index.ErrRunExists, "x"), CodeRunExists},
		{fmt.Errorf("a: %w", index.ErrBadInput), CodeBadInput},
		{fmt.Errorf("a: %w", index.ErrCorrupt), CodeCorrupt},
		{fmt.Errorf("a: %w", context.Canceled), CodeCanceled},
		{errors.New("disk on fire\nsecond line"), CodeInternal},
	} {
		e := ErrorFor(tc.err)
		if e.Code != tc.code || strings.Contains(e.Message, "\n") {
			t.Errorf("ErrorFor(%v) = %+v, want code %s and one line", tc.err, e, tc.code)
		}
		data, _ := json.Marshal(e)
		var back Error
		json.Unmarshal(data, &back)
		for _, s := range sentinels {
			if errors.Is(tc.err, s.err) && tc.code == s.code && !errors.Is(&back, s.err) {
				t.Errorf("%s: errors.Is(%v) fails after the wire", tc.code, s.err)
			}
		}
	}
}

// TestClientErrors: a typed error body becomes the *Error, anything else
// an internal error with the status, and a server that hangs up
// ErrConnectionLost.
func TestClientErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v1/runs/nope":
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":{"code":"run_not_found","message":"index: run not found: \"nope\""}}`)
		case "/v1/runs":
			http.Error(w, "proxy says no", http.StatusBadGateway)
		case "/v1/verify":
			w.Header().Set("Content-Type", ContentEvents)
			io.WriteString(w, `{"progress":{"done":1,"total":2}}`+"\n")
		default:
			hj, _ := w.(http.Hijacker)
			c, _, _ := hj.Hijack()
			c.Close()
		}
	}))
	defer srv.Close()
	c := New(srv.URL, srv.Client())
	ctx := context.Background()
	_, err := c.Run(ctx, "nope")
	if !errors.Is(err, index.ErrRunNotFound) || err.Error() != `index: run not found: "nope"` {
		t.Errorf("Run: %v", err)
	}
	_, err = c.Runs(ctx)
	if e := ErrorFor(err); e.Code != CodeInternal || !strings.Contains(e.Message, "502") || !strings.Contains(e.Message, "proxy says no") {
		t.Errorf("Runs: %v", err)
	}
	var seen int
	_, err = c.Verify(ctx, "", func(done, total uint64) { seen++ })
	if !errors.Is(err, ErrConnectionLost) || seen != 1 {
		t.Errorf("Verify cut after a progress event: %v (%d events)", err, seen)
	}
	if _, err := c.Status(ctx); !errors.Is(err, ErrConnectionLost) {
		t.Errorf("Status from a server that hangs up: %v", err)
	}
}
