package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/index"
)

// ckptfs runs one command line in-process and returns exit code and output.
func ckptfs(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), append([]string{"ckptfs"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String(), errb.String()
}

func writeDumps(t *testing.T, dir string, n int, frames int) []string {
	t.Helper()
	img := make([]byte, frames*index.PageSize)
	rand.Read(img[:len(img)/2])
	var paths []string
	for i := 0; i < n; i++ {
		if i > 0 {
			rand.Read(img[i*index.PageSize : (i+3)*index.PageSize])
		}
		p := filepath.Join(dir, "dump"+string(rune('0'+i)))
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// writeImport writes 3 dumps of 64 frames and their working sets,
// W_0 = 0-9,40 and W_1 = 1-5, into dir.
func writeImport(t *testing.T, dir string) (dumps []string, wsDir string) {
	t.Helper()
	dumps = writeDumps(t, dir, 3, 64)
	wsDir = filepath.Join(dir, "ws")
	os.Mkdir(wsDir, 0o700)
	os.WriteFile(filepath.Join(wsDir, "0.ws"), []byte("0-9,40\n"), 0o600)
	os.WriteFile(filepath.Join(wsDir, "1.ws"), []byte("1-5\n"), 0o600)
	return dumps, wsDir
}

func TestStoreCommands(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	dumps, wsDir := writeImport(t, dir)

	if code, out, errs := ckptfs(t, "--store", store, "import", "--run", "r1", "--ws-dir", wsDir, dumps[0], dumps[1], dumps[2]); code != 0 || !strings.Contains(out, "packed 2 working sets") {
		t.Fatalf("import: %d %q %s", code, out, errs)
	}
	// Import packed both working sets; pack finds nothing left to do.
	if code, out, errs := ckptfs(t, "--store", store, "pack", "r1"); code != 0 || out != "" {
		t.Fatalf("pack after import: %d %q %s", code, out, errs)
	}
	code, out, _ := ckptfs(t, "--store", store, "ls")
	if code != 0 || !strings.Contains(out, "r1") {
		t.Fatalf("ls: %d %q", code, out)
	}
	code, out, _ = ckptfs(t, "--store", store, "info", "r1", "1", "--json")
	if code != 0 || !strings.Contains(out, `"ws_frames": 5`) {
		t.Fatalf("info --json: %d %q", code, out)
	}
	for i, d := range dumps {
		out := filepath.Join(dir, "out")
		if code, _, errs := ckptfs(t, "--store", store, "export", "--run", "r1", "--interval", string(rune('0'+i)), out); code != 0 {
			t.Fatalf("export: %s", errs)
		}
		a, _ := os.ReadFile(out)
		b, _ := os.ReadFile(d)
		if !bytes.Equal(a, b) {
			t.Fatalf("export of checkpoint %d differs from its dump", i)
		}
	}
	if code, out, errs := ckptfs(t, "--store", store, "verify"); code != 0 || !strings.HasPrefix(out, "ok:") || !strings.Contains(out, "2 working-set packs") || !strings.Contains(out, "table files checked") {
		t.Fatalf("verify: %d %q %q", code, out, errs)
	}
	if code, _, _ := ckptfs(t, "--store", store, "rm", "r1"); code != 0 {
		t.Fatal("rm failed")
	}
	if code, _, _ := ckptfs(t, "--store", store, "info", "r1"); code == 0 {
		t.Fatal("info of a removed run succeeded")
	}
}

// TestBadInput: every mistake is one line on stderr and a non-zero exit,
// 2 for usage.
func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	dumps := writeDumps(t, dir, 2, 16)
	short := filepath.Join(dir, "short")
	os.WriteFile(short, make([]byte, 5000), 0o600)
	other := filepath.Join(dir, "other")
	os.WriteFile(other, make([]byte, 8*index.PageSize), 0o600)
	badWS := filepath.Join(dir, "badws")
	os.Mkdir(badWS, 0o700)
	os.WriteFile(filepath.Join(badWS, "0.ws"), []byte("3-x\n"), 0o600)
	ckptfs(t, "--store", store, "import", "--run", "exists", dumps[0])
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"frobnicate"}, 2, "no command"},
		{[]string{"import", dumps[0]}, 2, "--run"},
		{[]string{"import", "--run", "a/b", dumps[0]}, 2, "bad run name"},
		{[]string{"import", "--run", "x", short}, 1, "not a positive multiple"},
		{[]string{"import", "--run", "x", dumps[0], other}, 1, "bytes, but"},
		{[]string{"import", "--run", "x", filepath.Join(dir, "missing")}, 1, "no such file"},
		{[]string{"import", "--run", "x", "--ws-dir", badWS, dumps[0], dumps[1]}, 1, "not a decimal"},
		{[]string{"import", "--run", "exists", dumps[0]}, 1, "run exists"},
		{[]string{"export", "--run", "exists", "--interval", "7", filepath.Join(dir, "o")}, 1, "not committed"},
		{[]string{"export", "--run", "exists", "--interval", "-1", filepath.Join(dir, "o")}, 2, "interval"},
		{[]string{"ls", "--nope"}, 2, "flag provided but not defined"},
		{[]string{"pack"}, 2, "give one run"},
		{[]string{"pack", "a/b"}, 2, "bad run name"},
		{[]string{"pack", "nope"}, 1, "run not found"},
		{[]string{"demo", "--concurrency", "0"}, 2, "concurrency"},
		{[]string{"replay", "bench", "--mount", dir, "--run", "r", "--concurrency", "1,x"}, 2, "concurrency"},
		{[]string{"replay", "bench", "--mount", dir, "--run", "r", "--modes", "a,e"}, 2, `unknown mode "e"`},
		{[]string{"--store", filepath.Join(dir, "nostore"), "ls"}, 1, "no store"},
		{[]string{"info", "exists", "-1"}, 2, "interval -1 is negative"},
		{[]string{"info", "exists", "x"}, 2, `interval "x" is not a number`},
		{[]string{"info", "-1", "--json"}, 2, "bad run name"},
		{[]string{"mount", short}, 1, "is not a directory"},
	} {
		args := tc.args
		if args[0] != "--store" {
			args = append([]string{"--store", store}, args...)
		}
		code, _, errs := ckptfs(t, args...)
		if code != tc.code || !strings.Contains(errs, tc.msg) || strings.Count(errs, "\n") != 1 || strings.Contains(errs, "ckptfs: ckptfs:") {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and one line with %q", tc.args, code, errs, tc.code, tc.msg)
		}
	}
	// Nothing of the failed imports became visible.
	code, out, _ := ckptfs(t, "--store", store, "ls")
	if code != 0 || strings.Contains(out, "\nx ") {
		t.Fatalf("a failed import left a run: %q", out)
	}
}

// TestForwardToOwner: while another holder owns the store, commands go
// through its socket and see (and change) the owner's store.
func TestForwardToOwner(t *testing.T) {
	dir := t.TempDir()
	// A deep directory exercises the /proc/self/fd socket path.
	store := filepath.Join(dir, strings.Repeat("d", 60), strings.Repeat("e", 60), "store")
	dumps := writeDumps(t, dir, 2, 32)
	st, err := index.Open(store, index.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := serveStore(st, &ownedStore{st: st, what: "test owner"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if code, _, errs := ckptfs(t, "--store", store, "import", "--run", "fwd", dumps[0], dumps[1]); code != 0 {
		t.Fatalf("forwarded import: %d %s", code, errs)
	}
	ri, err := st.Run("fwd")
	if err != nil || ri.Checkpoints != 2 {
		t.Fatalf("owner does not see the forwarded import: %+v %v", ri, err)
	}
	code, out, _ := ckptfs(t, "--store", store, "ls")
	if code != 0 || !strings.Contains(out, "fwd") {
		t.Fatalf("forwarded ls: %d %q", code, out)
	}
	code, _, errs := ckptfs(t, "--store", store, "info", "nope")
	if code != 1 || !strings.Contains(errs, "not found") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("forwarded error: %d %q", code, errs)
	}
	// Tables, not the memtable, so that the export goes through the block
	// cache.
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	out2 := filepath.Join(dir, "out")
	if code, _, errs := ckptfs(t, "--store", store, "export", "--run", "fwd", "--interval", "1", out2); code != 0 {
		t.Fatalf("forwarded export: %s", errs)
	}
	a, _ := os.ReadFile(out2)
	b, _ := os.ReadFile(dumps[1])
	if !bytes.Equal(a, b) {
		t.Fatal("forwarded export differs")
	}
	// replay bench empties the owner's block cache through the socket.
	if st.CacheSize() == 0 {
		t.Fatal("the export left nothing in the block cache")
	}
	if err := dropStoreCache(context.Background(), store); err != nil {
		t.Fatal(err)
	}
	if n := st.CacheSize(); n != 0 {
		t.Fatalf("block cache holds %d bytes after drop-caches", n)
	}
}

// TestServesMount checks which command lines re-exec with MADV_FREE for
// the heap (godebug.go): the serving commands, wherever the global flags
// put them, and no other command that merely names one.
func TestServesMount(t *testing.T) {
	app := newApp(nil, io.Discard, io.Discard)
	for _, tc := range []struct {
		args string
		want bool
	}{
		{"mount MNT", true},
		{"--store S --log-level debug mount MNT --prefetch none", true},
		{"demo --synthetic", true},
		{"record --qmp Q --mem M --run R --mount MNT", true},
		{"record --mount=MNT --qmp Q", true},
		{"record --qmp Q --mem M --run R", false},
		{"record --qmp Q -- --mount", false},
		{"ls record", false},
		{"--store mount ls", false},
		{"replay bench --mount MNT --run R", false},
		{"", false},
	} {
		args := append([]string{"ckptfs"}, strings.Fields(tc.args)...)
		if got := servesMount(app, args); got != tc.want {
			t.Errorf("servesMount(%q) = %v, want %v", tc.args, got, tc.want)
		}
	}
}

// TestForwardOwnerDies: when the store's owner goes away in the middle of
// a forwarded command, the client says so in one line, not "unexpected
// EOF". A fake owner answers the status request, then reads the command's
// request and hangs up, before the answer or in the middle of it; for a
// streamed answer (verify) also after a progress event.
func TestForwardOwnerDies(t *testing.T) {
	for _, tc := range []struct {
		cmd     string
		partial string // what the owner sends before it hangs up
	}{
		{"ls", ""},
		{"ls", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nb\r\n[{\"name\":\"a\r\n"},
		{"verify", "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n27\r\n{\"progress\":{\"done\":1,\"total\":100000}}\n\r\n"},
	} {
		store := filepath.Join(t.TempDir(), "store")
		st, err := index.Open(store, index.Options{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("unix", filepath.Join(store, socketName))
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err == nil && req.URL.Path == "/v1/status" {
					io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"owner\":\"me\"}")
				} else if err == nil {
					io.Copy(io.Discard, req.Body)
					io.WriteString(c, tc.partial)
				}
				c.Close()
			}
		}()
		code, _, errs := ckptfs(t, "--store", store, tc.cmd)
		ln.Close()
		st.Close()
		if code != 1 || !strings.Contains(errs, "owner process exited or closed the connection") ||
			strings.Contains(errs, "EOF") || strings.Count(errs, "\n") != 1 {
			t.Fatalf("%s, partial answer %q: exit %d, stderr %q", tc.cmd, tc.partial, code, errs)
		}
	}
}

// TestForwardedOutputSame: a command gives the same output and exit code
// whether it opens the store or goes through the socket of its owner.
func TestForwardedOutputSame(t *testing.T) {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	dumps, wsDir := writeImport(t, dir)
	if code, _, errs := ckptfs(t, "--store", store, "import", "--run", "r1", "--ws-dir", wsDir, dumps[0], dumps[1], dumps[2]); code != 0 {
		t.Fatalf("import: %s", errs)
	}
	commands := [][]string{
		{"ls"}, {"ls", "r1"}, {"info", "r1"}, {"info", "r1", "1", "--json"}, {"info", "r1", "7"}, {"info", "nope"},
		{"verify"}, {"verify", "r1"}, {"pack", "r1"}, {"rm", "nope"},
		{"import", "--run", "r1", dumps[0]}, {"import", "--run", "x", dumps[0], filepath.Join(dir, "missing")},
		{"import", "--run", "x", "--ws-dir", dir, dumps[0], dumps[1]},
		{"export", "--run", "r1", "--interval", "3", filepath.Join(dir, "out")},
	}
	type result struct {
		code        int
		out, stderr string
	}
	var local []result
	for _, args := range commands {
		code, out, errs := ckptfs(t, append([]string{"--store", store}, args...)...)
		local = append(local, result{code, out, errs})
	}
	st, err := index.Open(store, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	srv, err := serveStore(st, &ownedStore{st: st, what: "test owner"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	for i, args := range commands {
		code, out, errs := ckptfs(t, append([]string{"--store", store}, args...)...)
		if got := (result{code, out, errs}); got != local[i] {
			t.Errorf("%v: forwarded %+v, local %+v", args, got, local[i])
		}
	}
}
