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
	"strconv"
	"sync"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/storeapi"
	"golang.org/x/sys/unix"
)

// The store socket: while a process owns a store (mount, record), other
// ckptfs commands on that store reach it over DIR/ckptfs.sock with the
// store API of internal/storeapi (HTTP, JSON), so that
// `curl --unix-socket DIR/ckptfs.sock http://ckptfs/v1/runs` works too.
// docs/DESIGN.md lists the endpoints.
const socketName = "ckptfs.sock"

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
	// The umask made it owner-only from the start; connecting needs only
	// write permission.
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("store socket: %w", err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	s := &storeServer{ln: ln, path: filepath.Join(st.Dir(), socketName)}
	s.srv = &http.Server{Handler: peerCheck(apiHandler(st, o), os.Geteuid()), ConnContext: func(ctx context.Context, c net.Conn) context.Context {
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

// Close stops the server and removes the socket.
func (s *storeServer) Close() {
	_ = s.srv.Close()
	s.wg.Wait()
	_ = os.Remove(s.path)
}

// apiHandler serves the store API v1 on the owner's store.
func apiHandler(st *index.Store, o *ownedStore) http.Handler {
	b := localStore{st}
	mux := http.NewServeMux()
	v1 := "/" + storeapi.Version
	mux.HandleFunc("GET "+v1+"/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, storeapi.Status{Version: storeapi.Version, PID: os.Getpid(), Owner: o.what, Store: st.Dir(), Mount: o.mountPoint, Generation: st.Generation()}, nil)
	})
	mux.HandleFunc("GET "+v1+"/runs", func(w http.ResponseWriter, r *http.Request) {
		runs, err := b.Runs(r.Context())
		writeJSON(w, runs, err)
	})
	mux.HandleFunc("GET "+v1+"/runs/{run}", func(w http.ResponseWriter, r *http.Request) {
		ri, err := b.Run(r.Context(), r.PathValue("run"))
		writeJSON(w, ri, err)
	})
	mux.HandleFunc("DELETE "+v1+"/runs/{run}", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, struct{}{}, b.DeleteRun(r.Context(), r.PathValue("run")))
	})
	mux.HandleFunc("GET "+v1+"/runs/{run}/intervals", func(w http.ResponseWriter, r *http.Request) {
		is, err := b.Intervals(r.Context(), r.PathValue("run"))
		writeJSON(w, is, err)
	})
	mux.HandleFunc("GET "+v1+"/runs/{run}/intervals/{i}", func(w http.ResponseWriter, r *http.Request) {
		i, err := pathInt(r, "i")
		if err != nil {
			writeJSON(w, nil, err)
			return
		}
		is, err := b.Interval(r.Context(), r.PathValue("run"), i)
		writeJSON(w, is, err)
	})
	mux.HandleFunc("POST "+v1+"/verify", func(w http.ResponseWriter, r *http.Request) {
		streamEvents(w, r, func(ev *eventWriter) (any, error) { return b.Verify(r.Context(), "", ev.progress) })
	})
	mux.HandleFunc("POST "+v1+"/runs/{run}/verify", func(w http.ResponseWriter, r *http.Request) {
		streamEvents(w, r, func(ev *eventWriter) (any, error) { return b.Verify(r.Context(), r.PathValue("run"), ev.progress) })
	})
	mux.HandleFunc("POST "+v1+"/runs/{run}/pack", func(w http.ResponseWriter, r *http.Request) {
		streamEvents(w, r, func(*eventWriter) (any, error) { return b.Pack(r.Context(), r.PathValue("run")) })
	})
	mux.HandleFunc("POST "+v1+"/runs/{run}/import", func(w http.ResponseWriter, r *http.Request) { serveImport(w, r, st) })
	mux.HandleFunc("GET "+v1+"/runs/{run}/checkpoints/{i}/image", func(w http.ResponseWriter, r *http.Request) { serveExport(w, r, st) })
	mux.HandleFunc("POST "+v1+"/runs/{run}/record", func(w http.ResponseWriter, r *http.Request) { serveRecord(w, r, st) })
	mux.HandleFunc("POST "+v1+"/drop-caches", func(w http.ResponseWriter, r *http.Request) {
		st.DropCache()
		writeJSON(w, struct{}{}, nil)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, nil, &storeapi.Error{Code: storeapi.CodeNotFound, Message: fmt.Sprintf("no endpoint %s %s in store API %s", r.Method, r.URL.Path, storeapi.Version)})
	})
	return mux
}

func pathInt(r *http.Request, name string) (int, error) {
	n, err := strconv.Atoi(r.PathValue(name))
	if err != nil || n < 0 {
		return 0, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: fmt.Sprintf("%s %q is not a non-negative integer", name, r.PathValue(name))}
	}
	return n, nil
}

// serveImport reads an import body (storeapi's importfmt.go) into a new run
// and streams progress back while it reads.
func serveImport(w http.ResponseWriter, r *http.Request, st *index.Store) {
	if ct := r.Header.Get("Content-Type"); ct != storeapi.ContentImport {
		writeJSON(w, nil, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: fmt.Sprintf("import: Content-Type %q, want %s", ct, storeapi.ContentImport)})
		return
	}
	// Refused before the body is read: a client that sent "Expect:
	// 100-continue" then sends no dumps at all.
	run := r.PathValue("run")
	if err := index.ValidRunName(run); err != nil {
		writeJSON(w, nil, err)
		return
	}
	if _, err := st.Run(run); err == nil {
		writeJSON(w, nil, fmt.Errorf("%w: %q", index.ErrRunExists, run))
		return
	}
	body := bufio.NewReaderSize(r.Body, 1<<20)
	// The rest of the body is read here whatever happens: net/http, in
	// full duplex, would read its end after the handler returns,
	// concurrently with the next request. A client stops sending when it
	// reads the error.
	defer io.Copy(io.Discard, body)
	h, wss, err := storeapi.ReadImportHeader(body)
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	// Progress goes out while the dumps come in.
	_ = http.NewResponseController(w).EnableFullDuplex()
	streamEvents(w, r, func(ev *eventWriter) (any, error) {
		return st.ImportStream(r.Context(), index.ImportStreamSpec{Run: run, RAMSize: h.RAMSize, Count: h.Dumps,
			WorkingSets: wss, Body: body, Progress: ev.progress})
	})
}

// serveExport streams checkpoint i as extents (storeapi's extents.go).
func serveExport(w http.ResponseWriter, r *http.Request, st *index.Store) {
	i, err := pathInt(r, "i")
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	sparse := false
	if v := r.URL.Query().Get("sparse"); v != "" {
		if sparse, err = strconv.ParseBool(v); err != nil {
			writeJSON(w, nil, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: fmt.Sprintf("sparse=%q: want true or false", v)})
			return
		}
	}
	w.Header().Set("Content-Type", storeapi.ContentExtents)
	f, _ := w.(http.Flusher)
	ew := storeapi.NewExtentWriter(w, func() {
		if f != nil {
			f.Flush()
		}
	})
	size, err := st.ExportTo(r.Context(), index.ExportSpec{Run: r.PathValue("run"), Interval: i, Sparse: sparse}, ew)
	switch {
	case err != nil && !ew.Started():
		w.Header().Del("Content-Type")
		writeJSON(w, nil, err)
	case err != nil:
		_ = ew.Fail(storeapi.ErrorFor(err))
	default:
		_ = ew.Close(size)
	}
}

// writeJSON answers v, or err as a typed error.
func writeJSON(w http.ResponseWriter, v any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		e := storeapi.ErrorFor(err)
		w.WriteHeader(e.Code.Status())
		_ = json.NewEncoder(w).Encode(struct {
			Error *storeapi.Error `json:"error"`
		}{e})
		return
	}
	_ = json.NewEncoder(w).Encode(v)
}

// eventWriter writes a stream of storeapi.Events.
type eventWriter struct {
	mu       sync.Mutex
	enc      *json.Encoder
	flusher  http.Flusher
	lastProg time.Time
}

func (e *eventWriter) send(ev storeapi.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_ = e.enc.Encode(ev)
	if e.flusher != nil {
		e.flusher.Flush()
	}
}

// progress sends a Progress event at most every 100 ms, and the last one.
func (e *eventWriter) progress(done, total uint64) {
	e.mu.Lock()
	now := time.Now()
	skip := done < total && now.Sub(e.lastProg) < 100*time.Millisecond
	if !skip {
		e.lastProg = now
	}
	e.mu.Unlock()
	if !skip {
		e.send(storeapi.Event{Progress: &storeapi.Progress{Done: done, Total: total}})
	}
}

// streamEvents answers with a stream of events: those fn sends, then its
// result or its error.
func streamEvents(w http.ResponseWriter, r *http.Request, fn func(ev *eventWriter) (any, error)) {
	w.Header().Set("Content-Type", storeapi.ContentEvents)
	ev := &eventWriter{enc: json.NewEncoder(w)}
	ev.flusher, _ = w.(http.Flusher)
	res, err := fn(ev)
	if err != nil {
		ev.send(storeapi.Event{Error: storeapi.ErrorFor(err)})
		return
	}
	data, err := json.Marshal(res)
	if err != nil {
		ev.send(storeapi.Event{Error: storeapi.ErrorFor(err)})
		return
	}
	ev.send(storeapi.Event{Result: data})
}

type connKey struct{}

// peerCheck admits only the owner's user (and root): the socket can read
// guest memory. Others get a typed forbidden error.
func peerCheck(h http.Handler, owner int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _ := r.Context().Value(connKey{}).(*net.UnixConn)
		if err := peerAllowed(c, owner); err != nil {
			slog.Warn("store socket: refused a peer", "err", err)
			writeJSON(w, nil, &storeapi.Error{Code: storeapi.CodeForbidden, Message: "store socket: " + err.Error()})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// peerAllowed checks the peer of c with SO_PEERCRED: it must be the user
// owner or root.
func peerAllowed(c *net.UnixConn, owner int) error {
	if c == nil {
		return errors.New("not a unix socket connection")
	}
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	if cerr := raw.Control(func(fd uintptr) { cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("reading the peer's credentials: %w", err)
	}
	if int(cred.Uid) != owner && cred.Uid != 0 {
		return fmt.Errorf("uid %d (pid %d) may not use a store owned by uid %d", cred.Uid, cred.Pid, owner)
	}
	return nil
}

// dropStoreCache asks the process that owns the store in dir to empty its
// block cache (replay bench's cold starts).
func dropStoreCache(ctx context.Context, dir string) error {
	path, release, err := socketPath(dir)
	if err != nil {
		return err
	}
	defer release()
	return storeapi.NewUnix(path).DropCaches(ctx)
}

// errOwnerGone means the store's owner went away in the middle of a
// forwarded command: it exited, or closed the connection.
var errOwnerGone = errors.New("the store's owner process exited or closed the connection during the request; the command may not have finished")
