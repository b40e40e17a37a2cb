package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/moby/sys/mountinfo"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// MountOptions configure a mount. The zero value is a good default.
type MountOptions struct {
	// Prefetch is what opening <i>.ram pushes into the page cache: "ws"
	// (the default, W_i) or "none" (nothing; the working-set frames of a
	// refused readahead window are still pushed, see doc.go).
	Prefetch string
	// AllowOther lets other users than the owner read the mount: FUSE
	// allow_other (a non-root owner needs user_allow_other in
	// /etc/fuse.conf) and every file and directory readable by all (0444,
	// .ram 0644, directories 0555). Without it the mount is owner-only.
	AllowOther bool
	// UID and GID own every file; default: the calling process's.
	UID, GID *uint32
	// Logger receives one line per failed operation (default slog.Default()).
	Logger *slog.Logger
	// Registry, if set, gets the mount's Prometheus metrics.
	Registry prometheus.Registerer
	// ReadaheadKB is the kernel readahead of the mount in KiB (the FUSE
	// bdi's read_ahead_kb). Zero means 1024, so that a sequential read of
	// full/<i>.ram becomes 1 MiB requests; negative leaves the kernel's
	// default. Setting it needs root; without, the default stays.
	ReadaheadKB int
	// Store is the directory of the store behind the source, if any; .status
	// shows it, so that tools find the socket of the process serving it.
	Store string
	// Debug logs every FUSE request (go-fuse's request log) to Logger.
	Debug bool
}

// Errors of the mount point checks.
var (
	// ErrStaleMount means the mount point is a FUSE mount whose daemon
	// died (ENOTCONN). CleanupStale detaches it.
	ErrStaleMount = errors.New("ckptfs: stale mount")
	// ErrMounted means something is already mounted there.
	ErrMounted = errors.New("ckptfs: already mounted")
	// ErrNotEmpty means the mount point has entries the mount would hide.
	ErrNotEmpty = errors.New("ckptfs: mount point not empty")
	// ErrBusy means Unmount found the mount in use and detached it lazily.
	ErrBusy = errors.New("ckptfs: mount busy")
)

// Server serves a Source at a mount point until Unmount. A process must never
// mmap or read the files of a mount it serves itself (see doc.go).
type Server struct {
	dir    string
	server *fuse.Server
	f      *fsys

	stopWatch chan struct{}
	closeOnce sync.Once
}

// Mount mounts src at mnt and serves it from background goroutines.
func Mount(mnt string, src Source, opts MountOptions) (*Server, error) {
	abs, err := filepath.Abs(mnt)
	if err != nil {
		return nil, err
	}
	if err := CheckMountpoint(abs); err != nil {
		return nil, err
	}
	f, err := newFsys(src, opts)
	if err != nil {
		return nil, err
	}
	f.uid, f.gid = uint32(os.Getuid()), uint32(os.Getgid())
	if opts.UID != nil {
		f.uid = *opts.UID
	}
	if opts.GID != nil {
		f.gid = *opts.GID
	}
	server, err := fuse.NewServer(newNodeFS(f), abs, fuseOptions(opts))
	if err != nil {
		f.close()
		return nil, fmt.Errorf("ckptfs: mounting %s: %w", abs, err)
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		f.close()
		return nil, fmt.Errorf("ckptfs: mounting %s: %w", abs, err)
	}
	closeOnExecFuse()
	m := &Server{dir: abs, server: server, f: f, stopWatch: make(chan struct{})}
	if opts.ReadaheadKB >= 0 {
		kb := opts.ReadaheadKB
		if kb == 0 {
			kb = 1024
		}
		if err := setReadahead(abs, kb); err != nil {
			f.log.Debug("ckptfs: kernel readahead unchanged", "mount", abs, "err", err)
		}
	}
	go m.watch()
	return m, nil
}

// newNodeFS builds the go-fuse file system of f.
func newNodeFS(f *fsys) fuse.RawFileSystem {
	f.root = &rootNode{f: f}
	return &rawFS{RawFileSystem: gofs.NewNodeFS(f.root, nodeOptions(f)), f: f}
}

// rawFS tells the nodes which READs are direct I/O: the kernel sends them
// for a process's own read(2) on a direct-I/O handle (a .ram file opened
// for writing) or with O_DIRECT, and nobody retries them when they fail.
// Page-cache fills (readahead, a fault, read(2) of a cached handle) are the
// kernel's and may be refused (see doc.go, Readahead). The kernel's
// direct-I/O path is the only one that names a lock owner
// (FUSE_READ_LOCKOWNER); go-fuse passes the nodes only the request's
// cancel channel, so that is the key.
type rawFS struct {
	fuse.RawFileSystem
	f *fsys
}

func (r *rawFS) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	if in.ReadFlags&fuse.READ_LOCKOWNER != 0 && cancel != nil {
		r.f.directReads.Store(cancel, struct{}{})
		defer r.f.directReads.Delete(cancel)
	}
	return r.RawFileSystem.Read(cancel, in, buf)
}

// directRead reports whether the READ of ctx is direct I/O (see rawFS).
func (f *fsys) directRead(ctx context.Context) bool {
	fc, ok := ctx.(*fuse.Context)
	if !ok || fc.Cancel == nil {
		return false
	}
	_, ok = f.directReads.Load(fc.Cancel)
	return ok
}

func nodeOptions(f *fsys) *gofs.Options {
	// Entries and attributes of committed data never change; one second
	// bounds how long a removed run stays visible. Failed lookups are not
	// cached, so new runs and checkpoints appear at once.
	sec := time.Second
	return &gofs.Options{
		EntryTimeout:    &sec,
		AttrTimeout:     &sec,
		NullPermissions: true,
		UID:             f.uid,
		GID:             f.gid,
		RootStableAttr:  &gofs.StableAttr{Ino: inoRoot},
	}
}

func fuseOptions(opts MountOptions) *fuse.MountOptions {
	mo := &fuse.MountOptions{
		AllowOther: opts.AllowOther,
		// The kernel checks the modes; the files are not
		// mounted "ro" because a VMM must be able to open them O_RDWR.
		Options:                  []string{"default_permissions"},
		FsName:                   "ckptfs",
		Name:                     "ckptfs",
		MaxWrite:                 1 << 20,
		MaxReadAhead:             1 << 20,
		MaxBackground:            64,
		DisableReadDirPlus:       true,
		ExplicitDataCacheControl: true,
		IgnoreSecurityLabels:     true,
		// A direct-I/O handle (a .ram file opened for writing) must
		// never be mapped shared; see ramFile.Open.
		DisabledCapabilities: fuse.CAP_DIRECT_IO_ALLOW_MMAP,
		DirectMount:          true,
		Debug:                opts.Debug,
	}
	if opts.Debug {
		l := opts.Logger
		if l == nil {
			l = slog.Default()
		}
		mo.Logger = slog.NewLogLogger(l.Handler(), slog.LevelDebug)
	} else {
		mo.Logger = log.New(discard{}, "", 0)
	}
	return mo
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Dir is the mount point.
func (m *Server) Dir() string { return m.dir }

// Status returns the mount's counters and last error.
func (m *Server) Status() Status { return m.f.status() }

// Unmount unmounts and stops serving. If processes still use the mount, the
// kernel refuses; Unmount then detaches it lazily (it disappears from the
// namespace, and its users keep it until they close their files or this
// process exits) and returns an error wrapping ErrBusy.
func (m *Server) Unmount() error {
	err := m.server.Unmount()
	if err == nil {
		m.shutdown()
		return nil
	}
	if _, mounted := mountedAt(m.dir); !mounted {
		m.shutdown()
		return nil
	}
	derr := unix.Unmount(m.dir, unix.MNT_DETACH)
	if derr != nil {
		derr = fusermount("-uz", m.dir)
	}
	m.f.stopPushes()
	if derr != nil {
		return fmt.Errorf("ckptfs: unmounting %s: %s; lazy unmount: %v", m.dir, strings.Join(strings.Fields(err.Error()), " "), derr)
	}
	return fmt.Errorf("%w: %s is still in use and was detached lazily; its users keep it until they close it or this process exits",
		ErrBusy, m.dir)
}

// Wait blocks until the mount ends (Unmount, or `fusermount3 -u` from
// outside) and releases its resources.
func (m *Server) Wait() {
	m.server.Wait()
	m.shutdown()
}

func (m *Server) shutdown() {
	m.closeOnce.Do(func() {
		close(m.stopWatch)
		m.f.close()
	})
}

// watch drops kernel entries of removed runs when the store's generation
// changes. New runs and checkpoints need nothing: failed lookups are not
// cached and directories are listed afresh.
func (m *Server) watch() {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	gen := m.f.src.Generation()
	for {
		select {
		case <-m.stopWatch:
			return
		case <-t.C:
		}
		g := m.f.src.Generation()
		if g == gen {
			continue
		}
		gen = g
		m.f.dropRemovedRuns()
	}
}

// dropRemovedRuns invalidates the entries of runs that no longer exist (or
// exist as a different run).
func (f *fsys) dropRemovedRuns() {
	root := f.root.EmbeddedInode()
	for name, ch := range root.Children() {
		rd, ok := ch.Operations().(*runDir)
		if !ok {
			continue
		}
		ri, err := f.src.Run(name)
		if err == nil && ri.ID == rd.id {
			continue
		}
		root.NotifyEntry(name)
	}
}

// CheckMountpoint reports whether mnt can be mounted on: an existing, empty
// directory that is not a mount already. A FUSE mount whose daemon died
// answers ENOTCONN; that gives ErrStaleMount with what to do about it. A
// directory with entries gives ErrNotEmpty: the mount would hide them (as
// fusermount refused without "nonempty").
func CheckMountpoint(mnt string) error {
	abs, err := filepath.Abs(mnt)
	if err != nil {
		return err
	}
	// statfs always reaches a FUSE daemon; stat may be answered from
	// attributes the kernel cached.
	var sfs unix.Statfs_t
	err = unix.Statfs(abs, &sfs)
	var st os.FileInfo
	if err == nil {
		st, err = os.Stat(abs)
	}
	if err != nil {
		if errors.Is(err, syscall.ENOTCONN) || errors.Is(err, syscall.ECONNABORTED) {
			return fmt.Errorf("%w: %s is left over from a ckptfs (or other FUSE) daemon that exited without unmounting; "+
				"clean it up (ckptfs can do it, or run `fusermount3 -uz %s`) and mount again", ErrStaleMount, abs, abs)
		}
		return fmt.Errorf("ckptfs: mount point %s: %w", abs, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("ckptfs: mount point %s is not a directory", abs)
	}
	if fstype, ok := mountedAt(abs); ok {
		return fmt.Errorf("%w: %s is already a mount point (%s); unmount it first", ErrMounted, abs, fstype)
	}
	d, err := os.Open(abs)
	if err != nil {
		return fmt.Errorf("ckptfs: mount point %s: %w", abs, err)
	}
	names, err := d.Readdirnames(1)
	d.Close()
	if err != nil && err != io.EOF {
		return fmt.Errorf("ckptfs: mount point %s: %w", abs, err)
	}
	if len(names) > 0 {
		return fmt.Errorf("%w: %s holds files (%s ...) that the mount would hide; use an empty directory", ErrNotEmpty, abs, names[0])
	}
	return nil
}

// CleanupStale detaches a stale mount at mnt (MNT_DETACH, or `fusermount3
// -uz` without privileges) and checks the result.
func CleanupStale(mnt string) error {
	abs, err := filepath.Abs(mnt)
	if err != nil {
		return err
	}
	if err := CheckMountpoint(abs); !errors.Is(err, ErrStaleMount) {
		if err == nil {
			return nil
		}
		return err
	}
	if err := unix.Unmount(abs, unix.MNT_DETACH); err != nil {
		if ferr := fusermount("-uz", abs); ferr != nil {
			return fmt.Errorf("ckptfs: detaching stale mount %s: %v; %v", abs, err, ferr)
		}
	}
	return CheckMountpoint(abs)
}

func fusermount(args ...string) error {
	for _, bin := range []string{"fusermount3", "fusermount"} {
		path, err := exec.LookPath(bin)
		if err != nil {
			continue
		}
		out, err := exec.Command(path, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %v: %s", bin, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	return errors.New("fusermount3 not found")
}

// mountedAt reports whether abs is a mount point, and of which file system
// type, from /proc/self/mountinfo.
func mountedAt(abs string) (fstype string, ok bool) {
	mounts, err := mountinfo.GetMounts(func(m *mountinfo.Info) (skip, stop bool) {
		return m.Mountpoint != abs, false
	})
	if err != nil || len(mounts) == 0 {
		return "", false
	}
	// Mounts stacked on one point are listed in mount order: the last is
	// the one a path lookup sees.
	return mounts[len(mounts)-1].FSType, true
}

// setReadahead sets the read_ahead_kb of the mount's backing device.
func setReadahead(abs string, kb int) error {
	var st unix.Stat_t
	if err := unix.Stat(abs, &st); err != nil {
		return err
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	return os.WriteFile(p, []byte(strconv.Itoa(kb)), 0)
}

// closeOnExecFuse marks every /dev/fuse descriptor of the process
// close-on-exec. go-fuse's direct mount opens /dev/fuse without it, and a
// child process (a tool, a VMM) that inherits the descriptor keeps the FUSE
// connection alive after this process dies: instead of failing with
// ENOTCONN, the mount then hangs its users, the child included, forever.
func closeOnExecFuse() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			unix.CloseOnExec(fd)
		}
	}
}
