package index

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cockroachdb/pebble/v2/vfs"
	"golang.org/x/sys/unix"
)

// A store holds guest memory, which is as private as the guest. Every file
// the store writes is owner-only (0600, directories 0700) whatever the
// umask or the mode of the directory it lives in: Pebble creates its files
// with 0666 and lets the umask decide, so privateFS creates each file with
// 0600 itself before Pebble opens it.
const (
	privateFileMode = 0o600
	privateDirMode  = 0o700
)

// privateFS makes every file and directory Pebble creates owner-only.
type privateFS struct{ vfs.FS }

// createPrivate makes name a new, empty, owner-only file (a new inode, as
// vfs.FS.Create promises), replacing whatever was there.
func createPrivate(name string) error {
	for {
		fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, privateFileMode)
		if err == nil {
			return unix.Close(fd)
		}
		if !errors.Is(err, unix.EEXIST) {
			return &os.PathError{Op: "create", Path: name, Err: err}
		}
		if err := os.Remove(name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
}

// ensurePrivate creates name owner-only unless it exists.
func ensurePrivate(name string) error {
	fd, err := unix.Open(name, unix.O_RDWR|unix.O_CREAT|unix.O_CLOEXEC, privateFileMode)
	if err != nil {
		return &os.PathError{Op: "open", Path: name, Err: err}
	}
	return unix.Close(fd)
}

func (p privateFS) Create(name string, category vfs.DiskWriteCategory) (vfs.File, error) {
	if err := createPrivate(name); err != nil {
		return nil, err
	}
	return p.FS.OpenReadWrite(name, category)
}

func (p privateFS) OpenReadWrite(name string, category vfs.DiskWriteCategory, opts ...vfs.OpenOption) (vfs.File, error) {
	if err := ensurePrivate(name); err != nil {
		return nil, err
	}
	return p.FS.OpenReadWrite(name, category, opts...)
}

func (p privateFS) ReuseForWrite(oldname, newname string, category vfs.DiskWriteCategory) (vfs.File, error) {
	// The renamed file keeps its (owner-only) mode.
	return p.FS.ReuseForWrite(oldname, newname, category)
}

func (p privateFS) Lock(name string) (io.Closer, error) {
	if err := ensurePrivate(name); err != nil {
		return nil, err
	}
	return p.FS.Lock(name)
}

func (p privateFS) MkdirAll(dir string, perm os.FileMode) error {
	return p.FS.MkdirAll(dir, perm&privateDirMode)
}

func (p privateFS) Unwrap() vfs.FS { return p.FS }

// tightenModes takes group and other bits off the store's own files (and
// its tmp directory), not off the directory itself, whose mode the user
// chose, nor off anything else a user keeps there: stores written before
// files were created owner-only.
func tightenModes(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if !storeFile(e.Name()) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		fi, err := e.Info()
		if err != nil || !(fi.Mode().IsRegular() || fi.IsDir()) {
			continue
		}
		if fi.Mode().Perm()&0o077 != 0 {
			_ = os.Chmod(p, fi.Mode().Perm()&^0o077)
		}
		if fi.IsDir() { // tmp/: tables being written
			if names, err := os.ReadDir(p); err == nil {
				for _, n := range names {
					if ti, err := n.Info(); err == nil && ti.Mode().IsRegular() && ti.Mode().Perm()&0o077 != 0 {
						_ = os.Chmod(filepath.Join(p, n.Name()), ti.Mode().Perm()&^0o077)
					}
				}
			}
		}
	}
}

// storeFile reports whether name is one of the files Pebble or ckptfs
// keeps at the top of a store directory.
func storeFile(name string) bool {
	switch name {
	case "CURRENT", "LOCK", "tmp", "ckptfs.lock":
		return true
	}
	for _, prefix := range []string{"MANIFEST-", "OPTIONS-", "marker."} {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	for _, suffix := range []string{".sst", ".log", ".blob"} {
		if strings.HasSuffix(name, suffix) {
			return true
		}
	}
	return false
}
