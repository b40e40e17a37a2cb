package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ckptfs/ckptfs/index"
	"github.com/urfave/cli/v2"
)

const (
	ownedKey = "ckptfs.owned"
	argsKey  = "ckptfs.args"
)

// ownedStore is the store of a process that serves it (mount, record); a
// command forwarded over the socket runs against it, with the client's cwd.
type ownedStore struct {
	st   *index.Store
	what string // what the owner is doing, for messages
	cwd  string // the forwarding client's working directory
}

func owned(c *cli.Context) *ownedStore {
	o, _ := c.App.Metadata[ownedKey].(*ownedStore)
	return o
}

// storeDir resolves --store, $CKPTFS_STORE, ./ckpt-store.
func storeDir(c *cli.Context) string {
	dir := c.String("store")
	if dir == "" {
		dir = os.Getenv("CKPTFS_STORE")
	}
	if dir == "" {
		dir = "ckpt-store"
	}
	return absPath(c, dir)
}

// absPath resolves p against the caller's working directory, which for a
// forwarded command is the client's.
func absPath(c *cli.Context, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	if o := owned(c); o != nil && o.cwd != "" {
		return filepath.Join(o.cwd, p)
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return abs
}

// withStore runs fn on the store: the owned one when forwarded, else the
// store opened here; if another process owns it, the whole command line is
// forwarded to that process over its socket.
func withStore(c *cli.Context, create bool, fn func(st *index.Store) error) error {
	if o := owned(c); o != nil {
		return fn(o.st)
	}
	dir := storeDir(c)
	st, err := index.Open(dir, index.Options{Create: create, Logger: slog.Default()})
	if errors.Is(err, index.ErrStoreBusy) {
		return forward(c, dir, err)
	}
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(st)
}

// forward sends this process's command line to the owner of dir.
func forward(c *cli.Context, dir string, busy error) error {
	args, _ := c.App.Metadata[argsKey].([]string)
	code, err := forwardCommand(c.Context, dir, args, c.App.Writer, c.App.ErrWriter)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		// The owner serves no socket (an import, a verify): nothing to
		// forward to until it finishes.
		return fmt.Errorf("%v; it takes no other commands, try again when it is done", busy)
	}
	if errors.Is(err, errOwnerGone) {
		return fmt.Errorf("store %s: %v (check with `ckptfs ls`, then retry)", dir, err)
	}
	if err != nil {
		return fmt.Errorf("%v; forwarding through its socket failed: %v", busy, err)
	}
	if code != 0 {
		return &exitError{code: code, err: errAlreadyReported}
	}
	return nil
}
