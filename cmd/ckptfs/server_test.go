package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/storeapi"
)

// peerChildEnv makes the test binary a client that asks the socket it
// names for the runs and prints the error code and message (see
// TestPeerRefused).
const peerChildEnv = "CKPTFS_TEST_PEER_SOCKET"

func init() {
	if path := os.Getenv(peerChildEnv); path != "" {
		_, err := storeapi.NewUnix(path).Runs(context.Background())
		var apiErr *storeapi.Error
		switch {
		case errors.As(err, &apiErr):
			fmt.Printf("%s: %s\n", apiErr.Code, apiErr.Message)
		case err != nil:
			fmt.Printf("error: %v\n", err)
		default:
			fmt.Println("admitted")
		}
		os.Exit(0)
	}
}

// memImage is an io.WriterAt into memory.
type memImage struct{ b []byte }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	return copy(m.b[off:], p), nil
}

// ownedForTest opens a store with run r1 (3 checkpoints, working sets) and
// serves it; it returns the store, the dumps and the socket's path.
func ownedForTest(t *testing.T) (*index.Store, []string, string) {
	t.Helper()
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	dumps, wsDir := writeImport(t, dir)
	st, err := index.Open(store, index.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if _, err := st.Import(context.Background(), index.ImportSpec{Run: "r1", Dumps: dumps, WSDir: wsDir}); err != nil {
		t.Fatal(err)
	}
	srv, err := serveStore(st, &ownedStore{st: st, what: "test owner", mountPoint: "/mnt/x"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Close)
	return st, dumps, filepath.Join(store, socketName)
}

// TestStoreAPI calls every endpoint with the typed client.
func TestStoreAPI(t *testing.T) {
	_, dumps, sock := ownedForTest(t)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %v, %v: want a socket only its owner may use", fi.Mode(), err)
	}
	cl := storeapi.NewUnix(sock)
	ctx := context.Background()

	status, err := cl.Status(ctx)
	if err != nil || status.PID != os.Getpid() || status.Owner != "test owner" || status.Mount != "/mnt/x" || status.Version != "v1" {
		t.Fatalf("status: %+v %v", status, err)
	}
	runs, err := cl.Runs(ctx)
	if err != nil || len(runs) != 1 || runs[0].Name != "r1" || runs[0].Checkpoints != 3 {
		t.Fatalf("runs: %+v %v", runs, err)
	}
	if ps, err := cl.Pack(ctx, "r1"); err != nil || ps.Intervals != 2 || ps.Frames != 16 {
		t.Fatalf("pack: %+v %v", ps, err)
	}
	ri, err := cl.Run(ctx, "r1")
	if err != nil || ri.Intervals != 2 || ri.RAMSize != 64*index.PageSize {
		t.Fatalf("run: %+v %v", ri, err)
	}
	stats, err := cl.Intervals(ctx, "r1")
	if err != nil || len(stats) != 3 || stats[0].WorkingSetFrames != 11 || stats[1].WorkingSetFrames != 5 {
		t.Fatalf("intervals: %+v %v", stats, err)
	}
	if is, err := cl.Interval(ctx, "r1", 1); err != nil || is.Interval != 1 || is.WorkingSetFrames != 5 || !is.Packed {
		t.Fatalf("interval 1: %+v %v", is, err)
	}
	for _, name := range []string{"nope", "a/b"} {
		_, err := cl.Run(ctx, name)
		var apiErr *storeapi.Error
		if !errors.As(err, &apiErr) || strings.Contains(apiErr.Message, "\n") {
			t.Fatalf("run %q: %v", name, err)
		}
		if want := map[string]error{"nope": index.ErrRunNotFound, "a/b": index.ErrBadRunName}[name]; !errors.Is(err, want) {
			t.Fatalf("run %q: %v (code %s), want %v", name, err, apiErr.Code, want)
		}
	}

	for i, d := range dumps {
		want, _ := os.ReadFile(d)
		img := &memImage{b: make([]byte, len(want))}
		size, err := cl.Export(ctx, "r1", i, false, img)
		if err != nil || size != uint64(len(want)) || !bytes.Equal(img.b, want) {
			t.Fatalf("export %d: size %d, %v, equal %v", i, size, err, bytes.Equal(img.b, want))
		}
	}
	// A sparse export carries W_1 = frames 1-5 only.
	want, _ := os.ReadFile(dumps[1])
	img := &memImage{b: make([]byte, len(want))}
	if _, err := cl.Export(ctx, "r1", 1, true, img); err != nil {
		t.Fatal(err)
	}
	for pfn := 0; pfn < 64; pfn++ {
		got, exp := img.b[pfn*index.PageSize:(pfn+1)*index.PageSize], want[pfn*index.PageSize:(pfn+1)*index.PageSize]
		if pfn < 1 || pfn > 5 {
			exp = make([]byte, index.PageSize)
		}
		if !bytes.Equal(got, exp) {
			t.Fatalf("sparse export: frame %d differs", pfn)
		}
	}
	if _, err := cl.Export(ctx, "r1", 3, false, img); !errors.Is(err, index.ErrCheckpointMissing) {
		t.Fatalf("export of checkpoint 3: %v", err)
	}

	rep, err := cl.Verify(ctx, "", nil)
	if err != nil || rep.Runs != 1 || rep.Checkpoints != 3 || rep.Packs != 2 || rep.Tables == 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	if rep, err := cl.Verify(ctx, "r1", nil); err != nil || rep.Runs != 1 {
		t.Fatalf("verify r1: %+v %v", rep, err)
	}
	if ps, err := cl.Pack(ctx, "r1"); err != nil || ps.Intervals != 0 || ps.Present != 2 {
		t.Fatalf("pack of a packed run: %+v %v", ps, err)
	}
	if err := cl.DeleteRun(ctx, "r1"); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Run(ctx, "r1"); !errors.Is(err, index.ErrRunNotFound) {
		t.Fatalf("run after rm: %v", err)
	}
	if err := cl.DeleteRun(ctx, "r1"); !errors.Is(err, index.ErrRunNotFound) {
		t.Fatalf("rm of a removed run: %v", err)
	}
}

// TestStoreAPIImport streams dumps and working sets into a new run and
// checks what the owner stored.
func TestStoreAPIImport(t *testing.T) {
	st, dumps, sock := ownedForTest(t)
	cl := storeapi.NewUnix(sock)
	var body bytes.Buffer
	storeapi.WriteImportHeader(&body, storeapi.ImportHeader{RAMSize: 64 * index.PageSize, Dumps: 2, WorkingSets: []string{"3-4"}})
	for _, d := range dumps[:2] {
		data, _ := os.ReadFile(d)
		body.Write(data)
	}
	var last uint64
	ri, err := cl.Import(context.Background(), "streamed", func(w io.Writer) error {
		_, err := w.Write(body.Bytes())
		return err
	}, func(done, total uint64) { last = done })
	if err != nil || ri.Checkpoints != 2 || ri.Intervals != 1 || last != 2*64*index.PageSize {
		t.Fatalf("import: %+v %v (progress %d)", ri, err, last)
	}
	ws, err := st.WorkingSet("streamed", 0)
	if err != nil || index.FormatList(ws) != "3-4\n" {
		t.Fatalf("W_0 of the streamed run: %v %v", ws, err)
	}
	// A body cut in the middle of dump 1 keeps checkpoint 0 and says so.
	_, err = cl.Import(context.Background(), "cut", func(w io.Writer) error {
		_, err := w.Write(body.Bytes()[:body.Len()-100])
		return err
	}, nil)
	if !errors.Is(err, index.ErrBadInput) || !strings.Contains(err.Error(), "checkpoints 0..0") {
		t.Fatalf("cut import: %v", err)
	}
}

// TestStoreAPIBadRequests: whatever a client sends, the answer is a typed
// error, and the argv endpoint is gone.
func TestStoreAPIBadRequests(t *testing.T) {
	_, _, sock := ownedForTest(t)
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	for _, tc := range []struct {
		method, path, ctype, body string
		status                    int
		code                      storeapi.Code
		msg                       string
	}{
		{"POST", "/v1/exec", "application/json", `{"args":["ckptfs","ls"],"cwd":"/"}`, 404, storeapi.CodeNotFound, "no endpoint"},
		{"GET", "/v2/runs", "", "", 404, storeapi.CodeNotFound, "no endpoint"},
		{"GET", "/v1/verify", "", "", 404, storeapi.CodeNotFound, "no endpoint GET /v1/verify"},
		{"GET", "/v1/runs/r1/intervals/x", "", "", 400, storeapi.CodeBadRequest, "non-negative"},
		{"GET", "/v1/runs/r1/intervals/9", "", "", 404, storeapi.CodeCheckpointMissing, "not committed"},
		{"GET", "/v1/runs/r1/checkpoints/0/image?sparse=maybe", "", "", 400, storeapi.CodeBadRequest, "sparse"},
		{"POST", "/v1/runs/new/import", "application/json", "{}", 400, storeapi.CodeBadRequest, "Content-Type"},
		{"POST", "/v1/runs/new/import", storeapi.ContentImport, "garbage\n", 400, storeapi.CodeBadRequest, "import header"},
		{"POST", "/v1/runs/new/import", storeapi.ContentImport, `{"ram_size":4096,"dumps":2,"working_sets":["0-99"]}` + "\n", 400, storeapi.CodeBadInput, "working set 0"},
		{"POST", "/v1/runs/new/record", "application/json", `{"interval_ns":1,"frobnicate":true}`, 400, storeapi.CodeBadRequest, "unknown field"},
		{"POST", "/v1/runs/new/record", "application/json", `{"interval_ns":`, 400, storeapi.CodeBadRequest, "record request"},
		{"POST", "/v1/runs/new/record", "application/json", `{"interval_ns":0}`, 400, storeapi.CodeBadRequest, "interval_ns"},
		{"POST", "/v1/runs/new/record", "application/json", `{"interval_ns":1,"tracker":"psychic"}`, 400, storeapi.CodeBadRequest, "tracker"},
	} {
		req, _ := http.NewRequest(tc.method, "http://ckptfs"+tc.path, strings.NewReader(tc.body))
		if tc.ctype != "" {
			req.Header.Set("Content-Type", tc.ctype)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var eb struct{ Error storeapi.Error }
		err = json.NewDecoder(resp.Body).Decode(&eb)
		resp.Body.Close()
		if err != nil || resp.StatusCode != tc.status || eb.Error.Code != tc.code || !strings.Contains(eb.Error.Message, tc.msg) {
			t.Errorf("%s %s: %d %+v (%v); want %d, %s with %q", tc.method, tc.path, resp.StatusCode, eb.Error, err, tc.status, tc.code, tc.msg)
		}
	}
	// A recording of a VM that is not there fails in the stream, typed.
	_, err := storeapi.NewUnix(sock).Record(context.Background(), "vm", storeapi.RecordRequest{IntervalNS: 1e8,
		QMP: filepath.Join(t.TempDir(), "no-qmp"), Mem: "/nonexistent"}, nil)
	var apiErr *storeapi.Error
	if !errors.As(err, &apiErr) || strings.Contains(apiErr.Message, "\n") {
		t.Fatalf("record of no VM: %v", err)
	}
}

// TestPeerRefused: a peer of another user is refused with a typed error.
// As root, a child of uid 65534 asks a socket it can reach; otherwise the
// check runs on this process's own connection against another owner.
func TestPeerRefused(t *testing.T) {
	st, _, _ := ownedForTest(t)
	if os.Geteuid() != 0 {
		a, b := unixPair(t)
		defer b.Close()
		if err := peerAllowed(a, os.Geteuid()); err != nil {
			t.Fatalf("own user refused: %v", err)
		}
		if err := peerAllowed(a, os.Geteuid()+1); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("uid %d", os.Geteuid())) {
			t.Fatalf("another owner's socket admitted uid %d: %v", os.Geteuid(), err)
		}
		return
	}
	// A socket nobody may reach, owned by root, served like the store's.
	dir, err := os.MkdirTemp("", "ckptfs-peer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "open.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o777)
	srv := &http.Server{Handler: peerCheck(apiHandler(st, &ownedStore{st: st, what: "test"}), 0), ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}}
	go srv.Serve(ln)
	defer srv.Close()
	// The test binary, where uid 65534 may run it.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	child := func(path string) string {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(), peerChildEnv+"="+path)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("child: %v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if out := child(sock); !strings.HasPrefix(out, "forbidden: store socket: uid 65534") || strings.Count(out, "\n") != 0 {
		t.Fatalf("uid 65534 on a reachable socket: %q", out)
	}
	// The store's own socket is out of its reach already.
	if out := child(filepath.Join(st.Dir(), socketName)); !strings.Contains(out, "permission denied") {
		t.Fatalf("uid 65534 on the store socket: %q", out)
	}
	// Root is admitted.
	if _, err := storeapi.NewUnix(sock).Runs(context.Background()); err != nil {
		t.Fatalf("root refused: %v", err)
	}
}

// unixPair returns the two ends of a connected unix socket.
func unixPair(t *testing.T) (*net.UnixConn, *net.UnixConn) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pair.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	b, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	a, err := ln.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, b
}
