// Package qmp is a small client for the QEMU Machine Protocol over a unix
// socket: the greeting and capabilities negotiation, commands with their
// replies matched by id, asynchronous events, file descriptors passed with
// SCM_RIGHTS (getfd), and the peer's process id (SO_PEERCRED).
//
// # Never hang
//
// Every call takes a context. A command whose reply does not come before the
// context ends returns the context's error (the command may still run in the
// VMM). When the socket dies — QEMU exited, the peer closed it, or a read
// failed — every pending and every later call returns an error wrapping
// ErrClosed, and Done is closed. Dial waits for the greeting at most until the
// context's deadline, or GreetingTimeout when the context has none, so a
// socket whose server never speaks does not hang the caller either.
//
// # Concurrency
//
// A Client is safe for concurrent use. Commands are written one at a time;
// replies are matched to their commands by id, so concurrent commands do not
// mix up results. Events are queued (the newest MaxQueuedEvents) until
// WaitEvent takes them.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// GreetingTimeout bounds the wait for the server's greeting when Dial's
// context has no deadline.
const GreetingTimeout = 5 * time.Second

// MaxQueuedEvents is how many events a Client keeps for WaitEvent; older
// ones are dropped.
const MaxQueuedEvents = 256

var (
	// ErrClosed is wrapped by every error caused by a dead connection:
	// the peer closed it (QEMU exited), a read failed, or Close was called.
	ErrClosed = errors.New("qmp: connection closed")
	// ErrNotQMP is wrapped by Dial's error when the peer does not greet
	// like a QMP server.
	ErrNotQMP = errors.New("qmp: not a QMP socket")
)

// Error is an error reply of the server ({"error": {"class", "desc"}}).
type Error struct {
	Command string // the command that failed
	Class   string // e.g. "GenericError", "CommandNotFound", "DeviceNotActive"
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp: %s: %s (%s)", e.Command, e.Desc, e.Class)
}

// Greeting is what the server announces on connect.
type Greeting struct {
	Version struct {
		QEMU struct {
			Major int `json:"major"`
			Minor int `json:"minor"`
			Micro int `json:"micro"`
		} `json:"qemu"`
		Package string `json:"package"`
	} `json:"version"`
	Capabilities []string `json:"capabilities"`
}

// Event is an asynchronous message of the server.
type Event struct {
	Name string
	Data json.RawMessage // the "data" member, or nil
	Time time.Time       // the server's timestamp
}

type message struct {
	QMP       json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *wireError      `json:"error"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	ID json.RawMessage `json:"id"`
}

type wireError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type request struct {
	Execute   string `json:"execute"`
	Arguments any    `json:"arguments,omitempty"`
	ID        uint64 `json:"id"`
}

type reply struct {
	ret json.RawMessage
	err *wireError
}

type pendingCmd struct {
	id  uint64
	ch  chan reply
	cmd string
}

// Client is a negotiated QMP connection.
type Client struct {
	conn     *net.UnixConn
	dec      *json.Decoder
	path     string
	greeting Greeting
	wmu      sync.Mutex // serializes writes of whole commands
	done     chan struct{}

	mu struct {
		sync.Mutex
		nextID  uint64
		pending []*pendingCmd // in the order the commands were sent
		events  []Event
		wake    chan struct{} // closed and replaced when an event arrives
		err     error         // why the connection is dead; set once
	}
}

// Dial connects to the QMP socket at path, reads the greeting and negotiates
// capabilities. A socket that does not speak QMP gives an error wrapping
// ErrNotQMP.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: connecting to %s: %w", path, err)
	}
	conn := nc.(*net.UnixConn)
	c := &Client{conn: conn, path: path, dec: json.NewDecoder(conn), done: make(chan struct{})}
	c.mu.wake = make(chan struct{})

	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(GreetingTimeout)
	}
	wait := time.Until(deadline).Round(time.Millisecond)
	_ = conn.SetReadDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Now()) })
	var m message
	err = c.dec.Decode(&m)
	stop()
	if err != nil {
		conn.Close()
		var ne net.Error
		switch {
		case ctx.Err() != nil:
			return nil, fmt.Errorf("qmp: %s sent no greeting in time (not a QMP socket, or the VMM is busy): %w", path, ctx.Err())
		case errors.As(err, &ne) && ne.Timeout():
			return nil, fmt.Errorf("%w: %s sent no greeting within %v", ErrNotQMP, path, wait)
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%w: %s closed the connection before a greeting (is another client connected? QEMU serves one at a time)", ErrNotQMP, path)
		default:
			return nil, fmt.Errorf("%w: %s: greeting is not QMP JSON: %v", ErrNotQMP, path, err)
		}
	}
	if m.QMP == nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %s: first message has no \"QMP\" member", ErrNotQMP, path)
	}
	if err := json.Unmarshal(m.QMP, &c.greeting); err != nil {
		conn.Close()
		return nil, fmt.Errorf("%w: %s: bad greeting: %v", ErrNotQMP, path, err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.readLoop()
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: negotiating capabilities on %s: %w", path, err)
	}
	return c, nil
}

// Greeting returns the server's greeting.
func (c *Client) Greeting() Greeting { return c.greeting }

// Done is closed when the connection is dead; Err then tells why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns nil while the connection is alive, else an error wrapping
// ErrClosed.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.mu.err
}

// Close closes the connection. Pending calls return errors wrapping ErrClosed.
func (c *Client) Close() error {
	c.fail(fmt.Errorf("%w: closed by the client", ErrClosed))
	err := c.conn.Close()
	<-c.done
	return err
}

// fail marks the connection dead with err (the first reason wins) and wakes
// every waiter.
func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.err != nil {
		return
	}
	c.mu.err = err
	for _, p := range c.mu.pending {
		close(p.ch)
	}
	c.mu.pending = nil
	close(c.mu.wake)
}

func (c *Client) readLoop() {
	defer close(c.done)
	defer c.conn.Close()
	for {
		var m message
		if err := c.dec.Decode(&m); err != nil {
			switch {
			case errors.Is(err, io.EOF):
				c.fail(fmt.Errorf("%w: %s: the server closed the connection (QEMU exited?)", ErrClosed, c.path))
			case errors.Is(err, net.ErrClosed):
				c.fail(fmt.Errorf("%w: %s", ErrClosed, c.path))
			default:
				c.fail(fmt.Errorf("%w: %s: reading: %v", ErrClosed, c.path, err))
			}
			return
		}
		switch {
		case m.Event != "":
			c.addEvent(m)
		case m.Return != nil || m.Error != nil:
			c.deliver(m)
		}
	}
}

func (c *Client) addEvent(m message) {
	ev := Event{Name: m.Event, Data: m.Data}
	if m.Timestamp != nil {
		ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.mu.err != nil {
		return
	}
	if len(c.mu.events) >= MaxQueuedEvents {
		c.mu.events = append(c.mu.events[:0], c.mu.events[1:]...)
	}
	c.mu.events = append(c.mu.events, ev)
	close(c.mu.wake)
	c.mu.wake = make(chan struct{})
}

// deliver hands a reply to the command with its id. A reply without an id
// (QEMU sends those for input it could not parse) goes to the oldest
// pending command.
func (c *Client) deliver(m message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	idx := -1
	if m.ID == nil {
		if len(c.mu.pending) > 0 {
			idx = 0
		}
	} else if id, err := strconv.ParseUint(string(m.ID), 10, 64); err == nil {
		for i, p := range c.mu.pending {
			if p.id == id {
				idx = i
				break
			}
		}
	}
	if idx < 0 {
		return // a reply to a command whose caller gave up
	}
	p := c.mu.pending[idx]
	c.mu.pending = append(c.mu.pending[:idx], c.mu.pending[idx+1:]...)
	p.ch <- reply{ret: m.Return, err: m.Error}
}

func (c *Client) forget(p *pendingCmd) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, q := range c.mu.pending {
		if q == p {
			c.mu.pending = append(c.mu.pending[:i], c.mu.pending[i+1:]...)
			return
		}
	}
}

// Execute runs cmd with args (nil for none; anything encoding/json turns
// into an object) and decodes the "return" member into result (nil to
// ignore it). An error reply is a *Error.
func (c *Client) Execute(ctx context.Context, cmd string, args, result any) error {
	return c.execute(ctx, cmd, args, result, nil)
}

// ExecuteWithFD runs cmd like Execute and passes fd along with it
// (SCM_RIGHTS), as getfd and add-fd expect. The caller keeps its fd and
// may close it once ExecuteWithFD returns.
func (c *Client) ExecuteWithFD(ctx context.Context, cmd string, args any, fd int, result any) error {
	return c.execute(ctx, cmd, args, result, unix.UnixRights(fd))
}

// SendFD passes fd to the server under name (QMP getfd), for commands that
// take "fd:name" (migrate, ...). The caller keeps its copy of fd.
func (c *Client) SendFD(ctx context.Context, name string, fd int) error {
	return c.ExecuteWithFD(ctx, "getfd", map[string]string{"fdname": name}, fd, nil)
}

// CloseFD drops an fd passed with SendFD that the server did not consume.
func (c *Client) CloseFD(ctx context.Context, name string) error {
	return c.Execute(ctx, "closefd", map[string]string{"fdname": name}, nil)
}

func (c *Client) execute(ctx context.Context, cmd string, args, result any, oob []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	c.mu.Lock()
	if c.mu.err != nil {
		err := c.mu.err
		c.mu.Unlock()
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	c.mu.nextID++
	p := &pendingCmd{id: c.mu.nextID, ch: make(chan reply, 1), cmd: cmd}
	c.mu.pending = append(c.mu.pending, p)
	c.mu.Unlock()

	b, err := json.Marshal(request{Execute: cmd, Arguments: args, ID: p.id})
	if err != nil {
		c.forget(p)
		return fmt.Errorf("qmp: %s: encoding arguments: %w", cmd, err)
	}
	if err := c.write(ctx, append(b, '\n'), oob); err != nil {
		c.forget(p)
		return fmt.Errorf("qmp: %s: %w", cmd, err)
	}
	select {
	case r, ok := <-p.ch:
		if !ok {
			return fmt.Errorf("qmp: %s: %w", cmd, c.Err())
		}
		if r.err != nil {
			return &Error{Command: cmd, Class: r.err.Class, Desc: r.err.Desc}
		}
		if result != nil && r.ret != nil {
			if err := json.Unmarshal(r.ret, result); err != nil {
				return fmt.Errorf("qmp: %s: decoding reply %.200s: %w", cmd, r.ret, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(p)
		return fmt.Errorf("qmp: %s: no reply: %w", cmd, ctx.Err())
	}
}

// write sends one whole command. A write that fails or is cut short by the
// context leaves the stream in an unknown state, so it kills the connection.
func (c *Client) write(ctx context.Context, b, oob []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	} else {
		_ = c.conn.SetWriteDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() { _ = c.conn.SetWriteDeadline(time.Now()) })
	defer stop()
	for len(b) > 0 {
		var n int
		var err error
		if oob != nil {
			n, _, err = c.conn.WriteMsgUnix(b, oob, nil)
			if n > 0 {
				oob = nil // the fd went with the first byte
			}
		} else {
			n, err = c.conn.Write(b)
		}
		b = b[n:]
		if err != nil {
			werr := fmt.Errorf("%w: %s: writing: %v", ErrClosed, c.path, err)
			if ctx.Err() != nil {
				werr = fmt.Errorf("%w: %s: write cut short: %w", ErrClosed, c.path, ctx.Err())
			}
			c.fail(werr)
			_ = c.conn.Close()
			return werr
		}
	}
	return nil
}

// WaitEvent returns the oldest queued event called name, waiting for one
// until ctx ends or the connection dies. Events of other names stay queued.
func (c *Client) WaitEvent(ctx context.Context, name string) (Event, error) {
	for {
		c.mu.Lock()
		for i, ev := range c.mu.events {
			if ev.Name == name {
				c.mu.events = append(c.mu.events[:i], c.mu.events[i+1:]...)
				c.mu.Unlock()
				return ev, nil
			}
		}
		if c.mu.err != nil {
			err := c.mu.err
			c.mu.Unlock()
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", name, err)
		}
		wake := c.mu.wake
		c.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			return Event{}, fmt.Errorf("qmp: waiting for event %s: %w", name, ctx.Err())
		}
	}
}

// DiscardEvents drops every queued event called name ("" for all).
func (c *Client) DiscardEvents(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	kept := c.mu.events[:0]
	for _, ev := range c.mu.events {
		if name != "" && ev.Name != name {
			kept = append(kept, ev)
		}
	}
	c.mu.events = kept
}

// PeerPID returns the process id of the server (SO_PEERCRED): for QEMU, the
// VMM process itself.
func (c *Client) PeerPID() (int, error) {
	rc, err := c.conn.SyscallConn()
	if err != nil {
		return 0, fmt.Errorf("qmp: peer credentials: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := rc.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, fmt.Errorf("qmp: peer credentials: %w", err)
	}
	if serr != nil {
		return 0, fmt.Errorf("qmp: peer credentials: %w", os.NewSyscallError("getsockopt SO_PEERCRED", serr))
	}
	if cred.Pid <= 0 {
		return 0, fmt.Errorf("qmp: peer credentials of %s carry no pid", c.path)
	}
	return int(cred.Pid), nil
}

// Status is the reply of query-status.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "postmigrate", "inmigrate", "shutdown", ...
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var st Status
	err := c.Execute(ctx, "query-status", nil, &st)
	return st, err
}

// DialStarting connects to the QMP socket of a QEMU that is starting: the
// socket appears some time after exec, and a QEMU that fails early may have
// made it already. It retries until it is greeted, exited is closed or ctx
// is done.
func DialStarting(ctx context.Context, sock string, exited <-chan struct{}) (*Client, error) {
	for {
		c, err := Dial(ctx, sock)
		if err == nil {
			return c, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("QEMU exited while starting: %w", err)
		case <-ctx.Done():
			return nil, err
		case <-time.After(10 * time.Millisecond):
		}
	}
}
