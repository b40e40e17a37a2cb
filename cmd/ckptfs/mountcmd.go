package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"

	ckfs "github.com/ckptfs/ckptfs/fs"
	"github.com/ckptfs/ckptfs/index"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/urfave/cli/v2"
)

// ownStore opens (or creates) the store for mount, which must own it: no
// forwarding. Creating an empty store lets a user mount first and record into
// the running mount, as DESIGN.md describes.
func ownStore(c *cli.Context) (*index.Store, error) {
	return index.Open(storeDir(c), index.Options{Create: true, Logger: slog.Default()})
}

// checkMountpoint checks that mnt can be mounted on, cleaning up a stale
// mount when asked. Commands call it before they open or create the store,
// so that a bad mount point leaves nothing behind.
func checkMountpoint(c *cli.Context, mnt string) error {
	err := ckfs.CheckMountpoint(mnt)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, ckfs.ErrStaleMount) && c.Bool("cleanup-stale"):
		slog.Warn("cleaning up a stale mount", "mnt", mnt)
		return ckfs.CleanupStale(mnt)
	case errors.Is(err, ckfs.ErrStaleMount):
		return fmt.Errorf("%v (run again with --cleanup-stale to unmount it)", err)
	}
	return err
}

// mountAt mounts st at mnt, handling stale mounts.
func mountAt(c *cli.Context, st *index.Store, mnt string, prefetch string, reg prometheus.Registerer) (*ckfs.Server, error) {
	if err := checkMountpoint(c, mnt); err != nil {
		return nil, err
	}
	return ckfs.Mount(mnt, ckfs.FromIndex(st), ckfs.MountOptions{
		Prefetch: prefetch, AllowOther: c.Bool("allow-other"), Logger: slog.Default(), Registry: reg, Store: st.Dir(),
	})
}

func mountFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "prefetch", Value: "ws", Usage: "`WHAT` opening <i>.ram pushes into the page cache: ws or none"},
		&cli.BoolFlag{Name: "allow-other", Usage: "let other users read the mount (guest memory holds secrets)"},
		&cli.BoolFlag{Name: "cleanup-stale", Usage: "unmount a stale mount left by a killed daemon first"},
		metricsFlag,
	}
}

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "serve the store at MNT until Ctrl-C (foreground)",
		ArgsUsage: "MNT",
		Flags:     mountFlags(),
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageErrorf("mount: want one mount point")
			}
			if p := c.String("prefetch"); p != "ws" && p != "none" {
				return usageErrorf("mount: --prefetch %q: want ws or none", p)
			}
			mnt := absPath(c, c.Args().First())
			if err := checkMountpoint(c, mnt); err != nil {
				return err
			}
			st, err := ownStore(c)
			if err != nil {
				return err
			}
			defer st.Close()
			reg, stopMetrics, err := serveMetrics(c.String("metrics-addr"))
			if err != nil {
				return err
			}
			defer stopMetrics()
			ckfs.TuneGC(st.CacheCapacity())
			srv, err := mountAt(c, st, mnt, c.String("prefetch"), reg)
			if err != nil {
				return err
			}
			sock, err := serveStore(st, &ownedStore{st: st, what: "ckptfs mount " + mnt + " (pid " + strconv.Itoa(os.Getpid()) + ")", mountPoint: mnt})
			if err != nil {
				srv.Unmount()
				return err
			}
			defer sock.Close()
			fmt.Fprintf(c.App.ErrWriter, "ckptfs: serving %s at %s; Ctrl-C unmounts\n", st.Dir(), mnt)
			return waitUnmount(c.Context, srv, c.App.ErrWriter)
		},
	}
}

// waitUnmount serves until ctx ends (Ctrl-C, SIGTERM) or the mount goes away
// (fusermount -u), then unmounts cleanly.
func waitUnmount(ctx context.Context, srv *ckfs.Server, stderr io.Writer) error {
	gone := make(chan struct{})
	go func() { srv.Wait(); close(gone) }()
	select {
	case <-ctx.Done():
		if err := srv.Unmount(); err != nil {
			return fmt.Errorf("unmounting %s: %w", srv.Dir(), err)
		}
		<-gone
		fmt.Fprintf(stderr, "ckptfs: unmounted %s\n", srv.Dir())
	case <-gone:
	}
	return nil
}
