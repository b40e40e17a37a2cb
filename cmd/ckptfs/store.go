package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/storeapi"
	"github.com/urfave/cli/v2"
)

// ownedStore is the store of a process that serves it (mount, record,
// demo) over its socket, and what the process is, for GET /v1/status.
type ownedStore struct {
	st         *index.Store
	what       string // what the owner is doing, for messages
	mountPoint string // where it mounts the store, if it does
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

// absPath resolves p against the working directory: a path sent to the
// store's owner is absolute.
func absPath(c *cli.Context, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return p
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return p
	}
	return abs
}

// withBackend runs fn on the store: opened here, or, if another process
// owns it, through that process's socket.
func withBackend(c *cli.Context, create bool, fn func(b storeBackend) error) error {
	dir := storeDir(c)
	st, err := index.Open(dir, index.Options{Create: create, Logger: slog.Default()})
	if errors.Is(err, index.ErrStoreBusy) {
		return withOwner(c.Context, dir, err, func(cl *storeapi.Client) error { return fn(remoteStore{cl}) })
	}
	if err != nil {
		return err
	}
	defer st.Close()
	return fn(localStore{st})
}

// withOwner runs fn with a client of the socket of the process that owns
// the store in dir (busy is why this process could not open it), and turns
// the ways that fails into one line each.
func withOwner(ctx context.Context, dir string, busy error, fn func(cl *storeapi.Client) error) error {
	path, release, err := socketPath(dir)
	if err != nil {
		return err
	}
	defer release()
	cl := storeapi.NewUnix(path)
	// Asking first tells a missing owner apart from the command's own
	// errors (a missing dump is ENOENT too).
	if _, err := cl.Status(ctx); err != nil {
		var apiErr *storeapi.Error
		switch {
		case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
			// The owner serves no socket (an import, a verify): nothing
			// to forward to until it finishes.
			return fmt.Errorf("%v; it takes no other commands, try again when it is done", busy)
		case errors.Is(err, storeapi.ErrConnectionLost):
			return fmt.Errorf("store %s: %v (check with `ckptfs ls`, then retry)", dir, errOwnerGone)
		case errors.As(err, &apiErr):
			return fmt.Errorf("%v; its socket refused: %v", busy, err)
		}
		return fmt.Errorf("%v; reaching it through its socket failed: %v", busy, err)
	}
	err = fn(cl)
	switch {
	case errors.Is(err, storeapi.ErrConnectionLost):
		return fmt.Errorf("store %s: %v (check with `ckptfs ls`, then retry)", dir, errOwnerGone)
	case ctx.Err() != nil && errors.Is(err, ctx.Err()):
		// Ctrl-C here ends the request there too; what the owner
		// committed before stays, as after a local Ctrl-C.
		return fmt.Errorf("interrupted: %w (the store's owner keeps what it committed; see `ckptfs ls`)", err)
	}
	return err
}
