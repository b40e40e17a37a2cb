package synthguest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// listenUnix listens on path. The socket is bound under a temporary name
// and renamed once it listens: between bind and listen a connect gets
// ECONNREFUSED, so a client that waits for the name to appear (as QEMU's
// users do) must never see it early.
func listenUnix(path string) (*net.UnixListener, error) {
	tmp := path + "~"
	_ = os.Remove(tmp)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // the caller removes path
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		_ = os.Remove(tmp)
		return nil, err
	}
	return ln, nil
}

// serve accepts QMP clients until the listener is closed. Like QEMU's
// monitor it serves several clients; each has its own passed fds.
func (g *guest) serve(ctx context.Context, ln *net.UnixListener) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			stop := context.AfterFunc(ctx, func() { c.Close() })
			defer stop()
			g.serveConn(c)
		}()
	}
}

type conn struct {
	g   *guest
	c   *net.UnixConn
	wmu sync.Mutex
	fds map[string]int
	neg bool // capabilities negotiated
}

func (cc *conn) send(v any) {
	b, _ := json.Marshal(v)
	cc.wmu.Lock()
	defer cc.wmu.Unlock()
	_, _ = cc.c.Write(append(b, '\r', '\n'))
}

func (cc *conn) event(name string, data any) { cc.eventAt(name, time.Now(), data) }

// eventAt sends event name with timestamp now.
func (cc *conn) eventAt(name string, now time.Time, data any) {
	m := map[string]any{"event": name,
		"timestamp": map[string]int64{"seconds": now.Unix(), "microseconds": int64(now.Nanosecond() / 1000)}}
	if data != nil {
		m["data"] = data
	}
	cc.send(m)
}

func (g *guest) serveConn(c *net.UnixConn) {
	cc := &conn{g: g, c: c, fds: map[string]int{}}
	defer func() {
		for _, fd := range cc.fds {
			unix.Close(fd)
		}
		c.Close()
	}()
	cc.send(map[string]any{"QMP": map[string]any{
		"version": map[string]any{"qemu": map[string]int{"major": 7, "minor": 2, "micro": 0},
			"package": "ckptfs-synthguest"},
		"capabilities": []string{}}})
	buf := make([]byte, 64<<10)
	oob := make([]byte, unix.CmsgSpace(8*4))
	var pending []byte
	var fds []int
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				if f, err := unix.ParseUnixRights(&m); err == nil {
					for _, fd := range f {
						unix.CloseOnExec(fd)
					}
					fds = append(fds, f...)
				}
			}
		}
		if n == 0 || err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return
		}
		pending = append(pending, buf[:n]...)
		dec := json.NewDecoder(bytes.NewReader(pending))
		for {
			var m qmpMsg
			off := dec.InputOffset()
			if err := dec.Decode(&m); err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					pending = append(pending[:0], pending[off:]...)
					break
				}
				cc.send(map[string]any{"error": qerr("GenericError", "JSON parse error, "+err.Error())})
				pending = pending[:0]
				break
			}
			// The fds arrive with the first byte of the command that
			// takes them; give them to the next command that does.
			var mine []int
			if m.Execute == "getfd" {
				mine, fds = fds, nil
			}
			ret, qe := cc.exec(m.Execute, m.Arguments, mine)
			if qe != nil {
				cc.send(map[string]any{"error": qe, "id": m.ID})
			} else {
				cc.send(map[string]any{"return": ret, "id": m.ID})
			}
			if m.Execute == "quit" {
				g.quit()
				return
			}
		}
	}
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func qerr(class, desc string) *qmpError { return &qmpError{Class: class, Desc: desc} }

func (cc *conn) exec(cmd string, args json.RawMessage, fds []int) (any, *qmpError) {
	g := cc.g
	empty := map[string]any{}
	if !cc.neg && cmd != "qmp_capabilities" {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return nil, qerr("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")
	}
	switch cmd {
	case "qmp_capabilities":
		if cc.neg {
			return nil, qerr("CommandNotFound", "Capabilities negotiation is already complete, command ignored")
		}
		cc.neg = true
		return empty, nil
	case "stop":
		g.mu.Lock()
		was := g.mu.running
		g.mu.Unlock()
		parked, err := g.stop()
		if err != nil {
			return nil, qerr("GenericError", err.Error())
		}
		if was {
			// Stamped when the workload stopped, like QEMU's STOP
			// when the vCPUs did, not after the truth files.
			cc.eventAt("STOP", parked, nil)
		}
		return empty, nil
	case "cont":
		g.mu.Lock()
		was := g.mu.running
		g.mu.Unlock()
		g.cont()
		if !was {
			cc.event("RESUME", nil)
		}
		return empty, nil
	case "quit":
		return empty, nil
	case "query-status":
		g.mu.Lock()
		defer g.mu.Unlock()
		return map[string]any{"running": g.mu.running, "status": g.mu.status, "singlestep": false}, nil
	case "getfd":
		var a struct {
			FDName string `json:"fdname"`
		}
		if err := json.Unmarshal(args, &a); err != nil || a.FDName == "" {
			for _, fd := range fds {
				unix.Close(fd)
			}
			return nil, qerr("GenericError", "Parameter 'fdname' is missing")
		}
		if len(fds) == 0 {
			return nil, qerr("GenericError", "No file descriptor supplied via SCM_RIGHTS")
		}
		for _, fd := range fds[1:] {
			unix.Close(fd)
		}
		if old, ok := cc.fds[a.FDName]; ok {
			unix.Close(old)
		}
		cc.fds[a.FDName] = fds[0]
		return empty, nil
	case "closefd":
		var a struct {
			FDName string `json:"fdname"`
		}
		_ = json.Unmarshal(args, &a)
		fd, ok := cc.fds[a.FDName]
		if !ok {
			return nil, qerr("GenericError", fmt.Sprintf("File descriptor named '%s' not found", a.FDName))
		}
		unix.Close(fd)
		delete(cc.fds, a.FDName)
		return empty, nil
	case "migrate-set-capabilities":
		var a struct {
			Capabilities []struct {
				Capability string `json:"capability"`
				State      bool   `json:"state"`
			} `json:"capabilities"`
		}
		if err := json.Unmarshal(args, &a); err != nil {
			return nil, qerr("GenericError", "Invalid parameter type for 'capabilities', expected: array")
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.mu.migStatus == "active" {
			return nil, qerr("GenericError", "There's a migration process in progress")
		}
		for _, c := range a.Capabilities {
			g.mu.caps[c.Capability] = c.State
		}
		return empty, nil
	case "migrate":
		return cc.migrate(args)
	case "query-migrate":
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.mu.migStatus == "" {
			return empty, nil
		}
		return map[string]any{"status": g.mu.migStatus}, nil
	}
	return nil, qerr("CommandNotFound", fmt.Sprintf("The command %s has not been found", cmd))
}

// migrate writes the fake device state into a passed fd, asynchronously,
// like QEMU's migration thread.
func (cc *conn) migrate(args json.RawMessage) (any, *qmpError) {
	g := cc.g
	var a struct {
		URI string `json:"uri"`
	}
	if err := json.Unmarshal(args, &a); err != nil || a.URI == "" {
		return nil, qerr("GenericError", "Parameter 'uri' is missing")
	}
	name, ok := strings.CutPrefix(a.URI, "fd:")
	if !ok {
		return nil, qerr("GenericError", "synthguest: only fd: migration URIs are supported")
	}
	fd, ok := cc.fds[name]
	if !ok {
		return nil, qerr("GenericError", fmt.Sprintf("File descriptor named '%s' not found", name))
	}
	g.mu.Lock()
	switch {
	case g.mu.migStatus == "active":
		g.mu.Unlock()
		return nil, qerr("GenericError", "There's a migration process in progress")
	case g.mu.running:
		g.mu.Unlock()
		return nil, qerr("GenericError", "synthguest: migrate works only while the guest is stopped")
	case !g.mu.caps["x-ignore-shared"]:
		g.mu.Unlock()
		return nil, qerr("GenericError", "synthguest: migration without x-ignore-shared would copy all RAM; enable it")
	}
	delete(cc.fds, name)
	g.mu.migStatus = "active"
	events := g.mu.caps["events"]
	state := DeviceState(g.cfg.Seed, g.mu.pauses-1)
	g.mu.Unlock()
	if events {
		cc.event("MIGRATION", map[string]string{"status": "setup"})
	}
	go func() {
		f := os.NewFile(uintptr(fd), "migration")
		_, err := f.Write(state)
		f.Close()
		status := "completed"
		if err != nil {
			status = "failed"
		}
		g.mu.Lock()
		g.mu.migStatus = status
		if status == "completed" {
			g.mu.status = "postmigrate"
		}
		g.mu.Unlock()
		if events {
			cc.event("MIGRATION", map[string]string{"status": status})
		}
	}()
	return map[string]any{}, nil
}
