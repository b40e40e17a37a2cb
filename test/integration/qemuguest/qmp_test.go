package qemuguest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"syscall"
	"time"
)

// qmp is a minimal QMP client for this package's tests (kvmrec has its own).
type qmp struct {
	c   *net.UnixConn
	dec *json.Decoder
}

type qmpError struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *qmpError) Error() string { return e.Class + ": " + e.Desc }

type qmpReply struct {
	Return json.RawMessage `json:"return"`
	Error  *qmpError       `json:"error"`
	Event  string          `json:"event"`
	QMP    json.RawMessage `json:"QMP"`
}

func dialQMP(path string) (*qmp, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return nil, err
	}
	q := &qmp{c: c.(*net.UnixConn), dec: json.NewDecoder(c)}
	_ = q.c.SetDeadline(time.Now().Add(10 * time.Second))
	var greet qmpReply
	if err := q.dec.Decode(&greet); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp greeting: %w", err)
	}
	if greet.QMP == nil {
		c.Close()
		return nil, errors.New("qmp: no greeting")
	}
	if _, err := q.exec("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

func (q *qmp) Close() error { return q.c.Close() }

// exec runs one command and returns its "return" value; events are skipped.
func (q *qmp) exec(cmd string, args any) (json.RawMessage, error) {
	return q.execFD(cmd, args, -1)
}

// execFD runs one command, passing fd along with it (SCM_RIGHTS) when fd >= 0,
// as "getfd" needs.
func (q *qmp) execFD(cmd string, args any, fd int) (json.RawMessage, error) {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	_ = q.c.SetDeadline(time.Now().Add(30 * time.Second))
	if fd >= 0 {
		_, _, err = q.c.WriteMsgUnix(b, syscall.UnixRights(fd), nil)
	} else {
		_, err = q.c.Write(b)
	}
	if err != nil {
		return nil, fmt.Errorf("qmp %s: %w", cmd, err)
	}
	for {
		var r qmpReply
		if err := q.dec.Decode(&r); err != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			return nil, fmt.Errorf("qmp %s: %w", cmd, r.Error)
		}
		return r.Return, nil
	}
}

func (q *qmp) status() (string, error) {
	r, err := q.exec("query-status", nil)
	if err != nil {
		return "", err
	}
	var s struct {
		Status string `json:"status"`
	}
	err = json.Unmarshal(r, &s)
	return s.Status, err
}

func (q *qmp) setIgnoreShared(on bool) error {
	_, err := q.exec("migrate-set-capabilities", map[string]any{
		"capabilities": []any{map[string]any{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

type migrateInfo struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
	TotalTime int64  `json:"total-time"` // ms
	Downtime  int64  `json:"downtime"`   // ms
	SetupTime int64  `json:"setup-time"` // ms
	RAM       *struct {
		Transferred int64 `json:"transferred"`
		Total       int64 `json:"total"`
		Normal      int64 `json:"normal"`
		Duplicate   int64 `json:"duplicate"`
	} `json:"ram"`
	raw json.RawMessage
}

// waitMigration polls query-migrate until the migration completed or failed.
func (q *qmp) waitMigration(timeout time.Duration) (migrateInfo, error) {
	deadline := time.Now().Add(timeout)
	var mi migrateInfo
	for {
		r, err := q.exec("query-migrate", nil)
		if err != nil {
			return mi, err
		}
		mi = migrateInfo{}
		if err := json.Unmarshal(r, &mi); err != nil {
			return mi, err
		}
		mi.raw = bytes.Clone(r)
		switch mi.Status {
		case "completed":
			return mi, nil
		case "failed", "cancelled":
			return mi, fmt.Errorf("migration %s: %s", mi.Status, mi.ErrorDesc)
		}
		if time.Now().After(deadline) {
			return mi, fmt.Errorf("migration not done after %v: %s", timeout, r)
		}
		time.Sleep(time.Millisecond)
	}
}
