// Package fs is the ckptfs FUSE file system: a read-only view of a store in
// which every checkpoint of a run is an ordinary file that a replay VMM can
// mmap and fault in lazily. It is built on go-fuse's fs API and reads the
// store through the small Source interface (FromIndex adapts an
// *index.Store); it imports no other ckptfs package but index.
//
//	MNT/<run>/run.json          run metadata
//	MNT/<run>/<i>.ram           sparse checkpoint i: W_i is data, the rest holes
//	MNT/<run>/<i>.ws            W_i in Linux list format
//	MNT/<run>/<i>.json          interval stats and this mount's counters
//	MNT/<run>/<i>.dev           device state of checkpoint i, when recorded
//	MNT/<run>/full/<i>.ram      complete checkpoint i
//	MNT/<run>/replay.log        the record/replay log of a deterministic run
//	MNT/.status                 the mount's counters, last error and store directory (not listed)
//
// # Files
//
// A .ram file has the guest RAM size. Its data frames are W_i (<i>.ram) or
// the frames that are not all zeros (full/<i>.ram); st_blocks counts only
// them, SEEK_DATA and SEEK_HOLE walk them exactly, and holes read as zeros.
// A one-frame read of <i>.ram that returns a hole is a working-set miss,
// counted per interval (<i>.json) and in the metrics (see Counters).
//
// The mount is read-only, but it is not mounted "ro": QEMU before 8.2 opens
// mem-path O_RDWR even for a private mapping, so open(O_RDWR) succeeds (the
// .ram files are 0600; everything else 0400, directories 0500, all owned by
// the mounting user, with default_permissions; with AllowOther, FUSE
// allow_other and modes readable by all: 0644, 0444, 0555, so other users
// read and map the files but only the owner opens .ram O_RDWR). write,
// truncate, O_TRUNC and every change of the tree or of attributes
// (unlink, rmdir, rename, mkdir, mknod, create, symlink, link, chmod,
// chown, utimes, setxattr, removexattr, fallocate) get EROFS (readonly.go;
// go-fuse's defaults would let unlink and rmdir succeed without removing
// anything); MAP_PRIVATE writes stay in the writer's private copy.
//
// A writable shared mapping is refused. Without that, its writes would go
// straight into the page cache that every reader of the file shares: on
// the 6.18 kernel measured here, after mmap(MAP_SHARED, PROT_WRITE) of an
// O_RDWR descriptor, a write and msync (which fails with EROFS, as the
// write-back does), new readers and new private mappings read the written
// bytes, the holes of <i>.ram included, until the pages are evicted. The
// server never sees an mmap; only the kernel can refuse it, and it does so
// for a handle opened with FOPEN_DIRECT_IO unless the connection allows
// direct-I/O mmap (FUSE_DIRECT_IO_ALLOW_MMAP, which the mount disables).
// So a .ram file opened with write access gets direct I/O: a shared
// mapping of it fails with ENODEV, a private one works. Read-only opens
// keep the page cache as below. The price: the kernel drops the file's
// page cache whenever such a handle is mapped privately (QEMU before 8.2,
// once per start), so pages pushed or read before that are read again.
//
// # Caching
//
// Committed checkpoints never change. Their files are opened with
// FOPEN_KEEP_CACHE and the mount asks for explicit data cache control, so
// the page cache of a .ram file survives opens and closes and is never
// invalidated behind the VMM's back (but see above: the kernel drops it
// when a .ram handle opened for writing is mapped). Entries and attributes live one
// second. Failed lookups are not cached and directories are listed afresh,
// so runs and checkpoints committed while mounted appear at once; a
// watcher drops the entries of removed runs when the store's Generation
// changes. run.json, <i>.json and .status change and are opened with
// direct I/O. Inode numbers are derived from (run ID, file kind, interval),
// so a node looked up twice is one inode; run IDs are never reused.
//
// replay.log exists only for runs that have a replay log. The log only
// grows, by whole commits: until the recording marks it complete its
// attributes are not cached (the size is read afresh) and it is opened with
// direct I/O, because a cached last page would keep the zeros beyond the
// old end of file; a complete log never changes again and is cached like a
// checkpoint. run.json of a deterministic run says "deterministic": true
// and lists "qemu_args"; <i>.json has "icount" (also inside "checkpoint").
//
// Checkpoint handles (with their frame maps) are shared by the files of one
// checkpoint and reference-counted by the kernel's inodes; a few idle ones
// stay open for the next `ls -l` or open. A handle loads W_i once; the
// sparse reads of <i>.ram (Frames.ReadWorkingSet) and the prefetch's pieces
// come from the store through it, which alone knows how W_i is stored.
//
// # Prefetch
//
// The first open of <i>.ram (MountOptions.Prefetch "ws", the default)
// starts pushing W_i into the page cache with notify-store, in contiguous
// runs of up to 1 MiB, so that the VMM's faults on its working set are
// page-cache hits. The work is cut into pieces of about 256 frames of W_i,
// as the store cuts them (Frames.WorkingSetPieces: where its own blocks of
// W_i end), so that two loaders never read one block. Loader goroutines (twice as many as
// cores: cold reads wait for the disk) read batches from the store while as
// many others push the batches already read (notify-store is mostly the
// kernel allocating and filling pages, which runs in parallel). At most
// eight prefetches run at once. The push follows the faults: every
// READ of the file while it runs tells it where the process is, and it
// continues from there (what it skipped comes after), so a VMM that faults
// faster than the store reads trails the push instead of paying a round
// trip per page.
//
// # Readahead
//
// The mount's kernel readahead is raised to 1 MiB (read_ahead_kb of its
// bdi, when the process may write it) and reads are up to 1 MiB
// (MaxWrite, MaxReadAhead), so a sequential read of full/<i>.ram is 1 MiB
// requests. For <i>.ram that readahead would drag holes into the page
// cache: a fault's read-around reads 1 MiB around the faulting page, and
// the zero pages it caches are then mapped into the VMM by fault-around
// without a fault, so misses would go unseen. So a READ of <i>.ram that
// spans several frames and touches a hole is refused (EIO). A read-around
// covers only pages not yet cached, so next to cached W_i frames it comes
// as one-frame READs of single holes: a one-frame READ of a hole from a
// process that maps the file is refused too, once. The kernel treats failed
// readahead as advisory and reads the page a fault needs on its own, once
// more, as a one-frame READ inside the refused window, which is served (and
// counted as a miss if it is a hole). read(2) is not retried, so a READ
// from a process without a mapping of the file is always served. Replays
// also load the working-set plugin with random=on (MADV_RANDOM on guest
// RAM), which turns read-around off altogether. The W_i frames of the refused window are pushed from a goroutine
// instead, so the working set keeps the benefit of readahead; that push
// starts once the READ of the page the kernel needs is answered (or after
// 2 ms), so it does not slow that READ down. The price is one more round
// trip for a fault outside the cached working set. Direct-I/O reads
// (O_DIRECT, or read(2) of a .ram file opened for writing, which has
// direct I/O) are a process's own and nobody would retry them: they are
// never refused. The kernel's direct-I/O path is the only one that sends
// a lock owner with a READ (FUSE_READ_LOCKOWNER), which is how the mount
// tells them from page-cache fills of the same handle: a fault of QEMU's
// private mapping of an O_RDWR descriptor is a page-cache fill. A
// folio-shaped read inside a recently refused window, and smaller than
// it, is served, in case a kernel that caches
// FUSE files in large folios retries a failed readahead with a whole folio
// (Linux 6.18 retries page by page, and sometimes repeats a whole refused
// window, which is refused again).
//
// # Counters
//
// The mount keeps one set of counters per interval (metrics.go): READs and
// bytes of <i>.ram and of full/<i>.ram, working-set misses, pushed bytes,
// refused readahead windows and errors. <i>.json shows an interval's
// ("mount"); .status and the Prometheus metrics (a collector without run or
// interval labels) show their sums, computed when they are read, so the
// three views never disagree. Mounts of one process that share a registry
// add up; a mount that ends leaves its sums in the metrics.
//
// A working-set miss ("misses", "miss_frames"; ckptfs_fs_ws_misses_total)
// is a hole of <i>.ram returned by a one-frame READ: a page fault, or a
// read of exactly that frame, by a process that wanted it. That is what a
// replay's verification asks: did the guest leave W_i? Holes inside a
// served READ of several frames are counted apart, as
// "folio_hole_frames" (ckptfs_fs_folio_hole_frames_total): such a READ is a
// kernel folio read retrying refused readahead (see Readahead), which drags
// in holes around the page a process needed, or an O_DIRECT read. Under
// host load the kernel retries far more of them, and counted as misses they
// made a replay that needed no hole look like hundreds of misses.
//
// # Memory
//
// Every block the store reads lands in memory the Go runtime allocates. On
// a machine where the first touch of a fresh page is expensive (a virtual
// machine whose host backs guest pages on first use, even after
// MAP_POPULATE), what matters for cold reads is that the runtime reuses
// memory it has touched rather than returning it to the kernel and faulting
// in new pages. With the default GOGC=100 the heap swings between one and
// two block caches, and when the live heap shrinks (the cache emptied, or
// not yet full) the scavenger returns the difference. A process that serves
// a mount therefore calls TuneGC: no proportional collection, and a memory
// limit that starts at the block cache plus a headroom (half the cache plus
// 256 MiB) and after each collection rises to the live heap plus the
// headroom when that is more, never falling. The memory the mount touched
// then stays mapped and is reused; it holds at most about the largest live
// heap plus the headroom (≈ 1 GiB for the default 512 MiB cache). An
// explicit GOGC or GOMEMLIMIT wins. `ckptfs mount` and `demo` call it;
// `record --mount` does not: the recorder's store writes allocate heavily,
// and a fixed limit with no proportional collection makes it collect far
// more often (docs/DECISIONS.md has the comparisons).
//
// Near the limit the runtime still hands freed spans back to the kernel,
// and the mount then faults the same memory in again. The CLI therefore
// runs every process that serves a mount (mount, demo, record --mount)
// with GODEBUG=madvdontneed=0 (cmd/ckptfs/godebug.go): freed spans go back
// with MADV_FREE, which the kernel reclaims only under memory pressure.
//
// # Errors
//
// Errors stay Go errors until the one place that maps them to an errno
// (errno, fail). A frame that fails its checksum (index.IsCorruption)
// makes the read that needs it fail with EIO — never wrong bytes — and
// logs one line with the file, offset and error; a failed multi-frame
// readahead is only a debug line, because the kernel then reads the pages
// it needs one by one and those reads report the error. Errors are
// counted (metrics, <i>.json, .status with the last error). A VMM that
// maps such a frame gets SIGBUS at that page.
//
// # Deadlocks
//
// A process must never mmap (or fault in any other way) a file of a mount
// it serves: the fault blocks an OS thread inside the kernel until a READ
// is answered, and the Go runtime may need that thread, or the goroutine
// waiting for it, to answer. Every test and benchmark that faults pages
// does it in a child process (the test binary re-executed with
// CKPTFS_FS_CHILD set) or with a tool (cmp, dd, cp).
//
// Children of the serving process must not inherit /dev/fuse: a child
// holding it keeps the connection alive after the daemon dies, and the
// mount then hangs its users (the child too, in uninterruptible sleep)
// instead of failing with ENOTCONN. go-fuse's direct mount leaves the
// descriptor inheritable, so Mount marks it close-on-exec.
//
// notify-store locks the page-cache pages it fills, and the kernel keeps a
// page locked while it waits for the READ that fills it. So pushes run on
// their own goroutines and never inside a READ handler, and no READ handler
// waits for a push: a READ that arrives while a push runs only leaves a
// hint. Identical concurrent small store reads (singleflight) share one
// load; a load never waits on the kernel.
package fs
