package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/internal/testenv"
)

// fakeServer is a minimal QMP server: it greets, answers qmp_capabilities
// and passes every other command to handle.
type fakeServer struct {
	t      *testing.T
	path   string
	ln     *net.UnixListener
	handle func(c *fakeConn, cmd string, args json.RawMessage, fds []int) (any, *wireError)
	// greeting replaces the QMP greeting when non-empty.
	greeting string
}

type fakeConn struct {
	conn *net.UnixConn
}

func (fc *fakeConn) send(v any) {
	b, _ := json.Marshal(v)
	_, _ = fc.conn.Write(append(b, '\r', '\n'))
}

func (fc *fakeConn) event(name string, data any) {
	fc.send(map[string]any{"event": name, "data": data,
		"timestamp": map[string]int64{"seconds": 1700000000, "microseconds": 5}})
}

func sockPath(t *testing.T) string {
	dir, err := os.MkdirTemp("", "qmp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "qmp.sock")
}

func newFake(t *testing.T, handle func(c *fakeConn, cmd string, args json.RawMessage, fds []int) (any, *wireError)) *fakeServer {
	s := &fakeServer{t: t, path: sockPath(t), handle: handle}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	s.ln = ln
	t.Cleanup(func() { ln.Close() })
	go s.serve()
	return s
}

func (s *fakeServer) serve() {
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			return
		}
		go s.serveConn(c)
	}
}

func (s *fakeServer) serveConn(c *net.UnixConn) {
	defer c.Close()
	fc := &fakeConn{conn: c}
	if s.greeting != "" {
		_, _ = c.Write([]byte(s.greeting))
	} else {
		fc.send(map[string]any{"QMP": map[string]any{
			"version":      map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 22}, "package": "fake"},
			"capabilities": []string{"oob"}}})
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(4*4))
	var pending []byte
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil {
			return
		}
		var fds []int
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				f, _ := unix.ParseUnixRights(&m)
				fds = append(fds, f...)
			}
		}
		pending = append(pending, buf[:n]...)
		for {
			i := strings.IndexByte(string(pending), '\n')
			if i < 0 {
				break
			}
			line := pending[:i]
			pending = pending[i+1:]
			var req struct {
				Execute   string          `json:"execute"`
				Arguments json.RawMessage `json:"arguments"`
				ID        json.RawMessage `json:"id"`
			}
			if err := json.Unmarshal(line, &req); err != nil {
				fc.send(map[string]any{"error": map[string]string{"class": "GenericError", "desc": "JSON parse error"}})
				continue
			}
			var ret any = map[string]any{}
			var werr *wireError
			if req.Execute != "qmp_capabilities" {
				ret, werr = s.handle(fc, req.Execute, req.Arguments, fds)
				fds = nil
			}
			if ret == nil && werr == nil {
				continue // the handler answers itself (or never)
			}
			if werr != nil {
				fc.send(map[string]any{"error": werr, "id": req.ID})
			} else {
				fc.send(map[string]any{"return": ret, "id": req.ID})
			}
		}
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestExecuteAndErrors(t *testing.T) {
	s := newFake(t, func(c *fakeConn, cmd string, args json.RawMessage, fds []int) (any, *wireError) {
		switch cmd {
		case "query-status":
			c.event("STOP", nil) // events may come between commands and replies
			return map[string]any{"running": false, "status": "paused", "singlestep": false}, nil
		case "echo":
			var a map[string]any
			_ = json.Unmarshal(args, &a)
			return a, nil
		}
		return nil, &wireError{Class: "CommandNotFound", Desc: "The command " + cmd + " has not been found"}
	})
	ctx := ctxT(t, 10*time.Second)
	c, err := Dial(ctx, s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if g := c.Greeting(); g.Version.QEMU.Major != 7 || g.Version.QEMU.Minor != 2 {
		t.Errorf("greeting %+v", g)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil || st.Status != "paused" || st.Running {
		t.Fatalf("query-status: %+v %v", st, err)
	}
	var out map[string]int
	if err := c.Execute(ctx, "echo", map[string]int{"a": 1}, &out); err != nil || out["a"] != 1 {
		t.Fatalf("echo: %v %v", out, err)
	}
	err = c.Execute(ctx, "nope", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "nope" {
		t.Fatalf("want *Error CommandNotFound, got %v", err)
	}
	ev, err := c.WaitEvent(ctx, "STOP")
	if err != nil || ev.Name != "STOP" || ev.Time.Unix() != 1700000000 {
		t.Fatalf("event: %+v %v", ev, err)
	}
	pid, err := c.PeerPID()
	if err != nil || pid != os.Getpid() {
		t.Fatalf("PeerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
}

func TestConcurrentCommandsMatchReplies(t *testing.T) {
	s := newFake(t, func(c *fakeConn, cmd string, args json.RawMessage, fds []int) (any, *wireError) {
		var a map[string]any
		_ = json.Unmarshal(args, &a)
		return a, nil
	})
	ctx := ctxT(t, 10*time.Second)
	c, err := Dial(ctx, s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	errc := make(chan error, 20)
	for i := 0; i < 20; i++ {
		go func() {
			var out map[string]int
			err := c.Execute(ctx, "echo", map[string]int{"n": i}, &out)
			if err == nil && out["n"] != i {
				err = errors.New("reply of another command")
			}
			errc <- err
		}()
	}
	for i := 0; i < 20; i++ {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
}

func TestNotQMP(t *testing.T) {
	for _, tc := range []struct {
		name, greeting string
	}{
		{"http", "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"},
		{"json", `{"hello": "world"}` + "\n"},
		{"eof", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := sockPath(t)
			ln, err := net.Listen("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte(tc.greeting))
				c.Close()
			}()
			_, err = Dial(ctxT(t, 5*time.Second), path)
			if !errors.Is(err, ErrNotQMP) {
				t.Fatalf("want ErrNotQMP, got %v", err)
			}
			t.Log(err)
		})
	}
	t.Run("silent", func(t *testing.T) {
		path := sockPath(t)
		ln, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err == nil {
				time.Sleep(2 * time.Second)
				c.Close()
			}
		}()
		start := time.Now()
		_, err = Dial(ctxT(t, 200*time.Millisecond), path)
		if err == nil || time.Since(start) > time.Second {
			t.Fatalf("silent server: err %v after %v", err, time.Since(start))
		}
		t.Log(err)
	})
	t.Run("nosocket", func(t *testing.T) {
		_, err := Dial(ctxT(t, time.Second), filepath.Join(t.TempDir(), "missing.sock"))
		if err == nil || !errors.Is(err, os.ErrNotExist) && !strings.Contains(err.Error(), "no such file") {
			t.Fatalf("missing socket: %v", err)
		}
	})
}

func TestDeadSocket(t *testing.T) {
	hang := make(chan struct{})
	s := newFake(t, func(c *fakeConn, cmd string, args json.RawMessage, fds []int) (any, *wireError) {
		switch cmd {
		case "die":
			c.conn.Close()
			return nil, nil
		case "hang":
			<-hang
			return nil, nil
		}
		return map[string]any{}, nil
	})
	defer close(hang)
	ctx := ctxT(t, 10*time.Second)

	c, err := Dial(ctx, s.path)
	if err != nil {
		t.Fatal(err)
	}
	// A command the server never answers returns when its context ends.
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	err = c.Execute(short, "hang", nil, nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang: want deadline exceeded, got %v", err)
	}
	c.Close()

	c, err = Dial(ctx, s.path)
	if err != nil {
		t.Fatal(err)
	}
	waitErr := make(chan error, 1)
	go func() {
		_, err := c.WaitEvent(ctx, "NEVER")
		waitErr <- err
	}()
	err = c.Execute(ctx, "die", nil, nil)
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("die: want ErrClosed, got %v", err)
	}
	t.Log(err)
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done not closed after the server closed the socket")
	}
	if err := <-waitErr; !errors.Is(err, ErrClosed) {
		t.Fatalf("WaitEvent: want ErrClosed, got %v", err)
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after death: want ErrClosed, got %v", err)
	}
	c.Close()
}

func TestSendFD(t *testing.T) {
	got := make(chan string, 1)
	s := newFake(t, func(c *fakeConn, cmd string, args json.RawMessage, fds []int) (any, *wireError) {
		if cmd != "getfd" {
			return nil, &wireError{Class: "CommandNotFound", Desc: cmd}
		}
		var a struct {
			FDName string `json:"fdname"`
		}
		_ = json.Unmarshal(args, &a)
		if len(fds) != 1 {
			return nil, &wireError{Class: "GenericError", Desc: "No file descriptor supplied via SCM_RIGHTS"}
		}
		f := os.NewFile(uintptr(fds[0]), a.FDName)
		_, _ = f.WriteString("hello " + a.FDName)
		f.Close()
		got <- a.FDName
		return map[string]any{}, nil
	})
	ctx := ctxT(t, 10*time.Second)
	c, err := Dial(ctx, s.path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	r := os.NewFile(uintptr(p[0]), "r")
	defer r.Close()
	if err := c.SendFD(ctx, "mig", p[1]); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[1])
	if n := <-got; n != "mig" {
		t.Fatalf("fdname %q", n)
	}
	b := make([]byte, 64)
	n, _ := r.Read(b)
	if string(b[:n]) != "hello mig" {
		t.Fatalf("read %q through the passed fd", b[:n])
	}
	// Without an fd the server refuses: the error comes back as *Error.
	var qe *Error
	if err := c.Execute(ctx, "getfd", map[string]string{"fdname": "x"}, nil); !errors.As(err, &qe) {
		t.Fatalf("getfd without fd: %v", err)
	}
}

// TestRealQEMU talks to a QEMU without a guest (-machine none).
func TestRealQEMU(t *testing.T) {
	bin := testenv.RequireQEMU(t)
	path := sockPath(t)
	ctx := ctxT(t, 30*time.Second)
	cmd := exec.CommandContext(ctx, bin, "-machine", "none", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:"+path+",server=on,wait=off")
	cmd.SysProcAttr = &unix.SysProcAttr{Pdeathsig: unix.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var c *Client
	var err error
	for {
		if c, err = Dial(ctx, path); err == nil {
			break
		}
		if ctx.Err() != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	defer c.Close()
	pid, err := c.PeerPID()
	if err != nil || pid != cmd.Process.Pid {
		t.Fatalf("PeerPID %d %v, want %d", pid, err, cmd.Process.Pid)
	}
	st, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("QEMU %+v status %+v", c.Greeting().Version, st)
	var qe *Error
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	if err := c.SendFD(ctx, "test-fd", p[1]); err != nil {
		t.Fatal(err)
	}
	unix.Close(p[1])
	if err := c.CloseFD(ctx, "test-fd"); err != nil {
		t.Fatal(err)
	}
	if err := c.Execute(ctx, "quit", nil, nil); err != nil && !errors.Is(err, ErrClosed) {
		t.Fatal(err)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("connection not dead after quit")
	}
	if !errors.Is(c.Err(), ErrClosed) {
		t.Fatalf("Err after quit: %v", c.Err())
	}
	t.Log(c.Err())
}
