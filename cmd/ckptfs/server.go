package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/ckptfs/ckptfs/index"
	"golang.org/x/sys/unix"
)

// The store socket: while a process owns a store (mount, record), other
// ckptfs commands on that store reach it over DIR/ckptfs.sock with plain
// HTTP, so `curl --unix-socket DIR/ckptfs.sock http://ckptfs/v1/runs` works.
//
//	POST /v1/exec   {"args": [...], "cwd": "..."} → NDJSON frames
//	                {"out": "..."} {"err": "..."} ... {"exit": N}
//	GET  /v1/runs          the runs (JSON)
//	GET  /v1/runs/{name}   one run (JSON)
//	GET  /v1/status        who owns the store
const socketName = "ckptfs.sock"

type execRequest struct {
	Args []string `json:"args"`
	Cwd  string   `json:"cwd"`
}

type execFrame struct {
	Out  string `json:"out,omitempty"`
	Err  string `json:"err,omitempty"`
	Exit *int   `json:"exit,omitempty"`
}

// socketPath returns a path to dir's socket short enough for sun_path (108
// bytes), going through /proc/self/fd when dir is deep. The returned
// closer releases the directory fd.
func socketPath(dir string) (string, func(), error) {
	p := filepath.Join(dir, socketName)
	if len(p) < 100 {
		return p, func() {}, nil
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	return fmt.Sprintf("/proc/self/fd/%d/%s", fd, socketName), func() { unix.Close(fd) }, nil
}

type storeServer struct {
	srv  *http.Server
	ln   net.Listener
	path string
	wg   sync.WaitGroup
}

// serveStore starts the socket server for the store this process owns.
func serveStore(st *index.Store, o *ownedStore) (*storeServer, error) {
	path, release, err := socketPath(st.Dir())
	if err != nil {
		return nil, err
	}
	defer release()
	// We hold the store lock, so a socket file left here is stale.
	_ = os.Remove(path)
	old := unix.Umask(0o077)
	ln, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("store socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	mux := http.NewServeMux()
	s := &storeServer{ln: ln, path: filepath.Join(st.Dir(), socketName)}
	mux.HandleFunc("POST /v1/exec", func(w http.ResponseWriter, r *http.Request) { s.exec(w, r, o) })
	mux.HandleFunc("GET /v1/runs", func(w http.ResponseWriter, r *http.Request) {
		runs, err := st.Runs()
		writeJSON(w, runs, err)
	})
	mux.HandleFunc("GET /v1/runs/{name}", func(w http.ResponseWriter, r *http.Request) {
		ri, err := st.Run(r.PathValue("name"))
		writeJSON(w, ri, err)
	})
	mux.HandleFunc("POST /v1/drop-caches", func(w http.ResponseWriter, r *http.Request) {
		st.DropCache()
		writeJSON(w, map[string]bool{"dropped": true}, nil)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"pid": os.Getpid(), "owner": o.what, "store": st.Dir(), "generation": st.Generation()}, nil)
	})
	s.srv = &http.Server{Handler: peerCheck(mux), ConnContext: func(ctx context.Context, c net.Conn) context.Context {
		return context.WithValue(ctx, connKey{}, c)
	}}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("store socket stopped", "err", err)
		}
	}()
	return s, nil
}

type connKey struct{}

// peerCheck admits only the owner's user (and root): the socket can read
// guest memory.
func peerCheck(h http.Handler) http.Handler {
	me := os.Geteuid()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(connKey{}).(*net.UnixConn)
		if c == nil {
			http.Error(w, "not a unix socket", http.StatusForbidden)
			return
		}
		raw, err := c.SyscallConn()
		var cred *unix.Ucred
		if err == nil {
			_ = raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
		}
		if err != nil || cred == nil || (int(cred.Uid) != me && cred.Uid != 0) {
			http.Error(w, "permission denied", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, index.ErrRunNotFound) || errors.Is(err, index.ErrBadRunName) {
			code = http.StatusNotFound
		}
		w.WriteHeader(code)
		_ = json.NewEncoder(w).Encode(map[string]string{"error": oneLine(err)})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

// exec runs a forwarded command line against the owned store and streams
// its output back.
func (s *storeServer) exec(w http.ResponseWriter, r *http.Request, o *ownedStore) {
	var req execRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil || len(req.Args) == 0 {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	fw := &frameWriter{enc: json.NewEncoder(w)}
	fw.flusher, _ = w.(http.Flusher)
	sub := *o
	sub.cwd = req.Cwd
	code := run(r.Context(), req.Args, strings.NewReader(""), fw.stream(false), fw.stream(true), &sub)
	fw.mu.Lock()
	_ = fw.enc.Encode(execFrame{Exit: &code})
	fw.mu.Unlock()
}

type frameWriter struct {
	mu      sync.Mutex
	enc     *json.Encoder
	flusher http.Flusher
}

type streamWriter struct {
	fw    *frameWriter
	isErr bool
}

func (fw *frameWriter) stream(isErr bool) io.Writer { return &streamWriter{fw, isErr} }

func (s *streamWriter) Write(p []byte) (int, error) {
	s.fw.mu.Lock()
	defer s.fw.mu.Unlock()
	f := execFrame{Out: string(p)}
	if s.isErr {
		f = execFrame{Err: string(p)}
	}
	if err := s.fw.enc.Encode(f); err != nil {
		return 0, err
	}
	if s.fw.flusher != nil {
		s.fw.flusher.Flush()
	}
	return len(p), nil
}

// Close stops the server and removes the socket.
func (s *storeServer) Close() {
	_ = s.srv.Close()
	s.wg.Wait()
	_ = os.Remove(s.path)
}

// socketClient is an HTTP client whose every connection goes to the unix
// socket at path.
func socketClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
}

// dropStoreCache asks the process that owns the store in dir to empty its
// block cache (replay bench's cold starts).
func dropStoreCache(ctx context.Context, dir string) error {
	path, release, err := socketPath(dir)
	if err != nil {
		return err
	}
	defer release()
	client := socketClient(path)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ckptfs/v1/drop-caches", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("store owner answered %s", resp.Status)
	}
	return nil
}

// forwardCommand sends args to the process that owns dir and copies its
// output here. It returns the remote exit code.
func forwardCommand(ctx context.Context, dir string, args []string, stdout, stderr io.Writer) (int, error) {
	path, release, err := socketPath(dir)
	if err != nil {
		return 0, err
	}
	defer release()
	client := socketClient(path)
	cwd, _ := os.Getwd()
	body, _ := json.Marshal(execRequest{Args: args, Cwd: cwd})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://ckptfs/v1/exec", strings.NewReader(string(body)))
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, ownerGone(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("owner answered %s: %s", resp.Status, strings.TrimSpace(string(msg)))
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var f execFrame
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return 0, fmt.Errorf("bad frame from owner: %v", err)
		}
		if f.Out != "" {
			io.WriteString(stdout, f.Out)
		}
		if f.Err != "" {
			io.WriteString(stderr, f.Err)
		}
		if f.Exit != nil {
			return *f.Exit, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return 130, nil
	}
	if err := sc.Err(); err != nil {
		return 0, ownerGone(err)
	}
	return 0, errOwnerGone
}

// errOwnerGone means the store's owner went away in the middle of a
// forwarded command: it exited, or closed the connection.
var errOwnerGone = errors.New("the store's owner process exited or closed the connection during the request; the command may not have finished")

// ownerGone turns the ways a connection ends early (EOF, reset, broken
// pipe) into errOwnerGone; other errors (no socket, refused) stay.
func ownerGone(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return errOwnerGone
	}
	return err
}
