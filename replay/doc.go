// Package replay restores checkpoints of a ckptfs mount into a VMM, and
// measures what sparse checkpoints buy: load time and memory footprint of
// full, sparse and lazy loading. It reads the mount's files like
// any VMM would, so it works on any directory with the mount's layout
// (DESIGN.md "The mount"; package replaytest writes such directories). It
// imports index only for the list format and the JSON types, and never fs,
// kvmrec or the CLI.
//
// # Replay in QEMU
//
// QEMU starts qemu-system-x86_64 with the recording's arguments and
//
//	-accel tcg -m SIZE
//	-object memory-backend-file,id=ram0,size=BYTES,mem-path=MNT/RUN/full/I.ram,share=off
//	-qmp unix:SOCK,server=on,wait=off -serial file:SERIAL -S -incoming defer
//
// (mem-path=MNT/RUN/I.ram with Sparse), then over QMP: query-status must say
// "inmigrate"; migrate-set-capabilities x-ignore-shared=true (the incoming
// side must set it too, or QEMU 7.2 refuses the stream); getfd with an fd of
// I.dev and migrate-incoming "fd:NAME" (or "exec:cat 'I.dev'" with
// DevViaExec); query-migrate until "completed"; cont. share=off maps the
// checkpoint MAP_PRIVATE: the guest's writes stay in QEMU and the file never
// changes. QEMU 7.2 opens mem-path O_RDWR even so, which the mount allows.
// test/integration/qemuguest/doc.go has the findings behind each step.
//
// The restore needs the recording's machine type, device set and backend id
// (the RAM block name), as any QEMU migration does. They come from
// RecordedArgs, by default run.json's meta "qemu_args" (a JSON array of
// strings; white-space separated words also parse, but cannot hold an
// -append with spaces), with what belongs to the recording process dropped:
// its RAM backend, -m, -mem-path, the accelerator (also accel= inside
// -machine), -qmp, -monitor, -incoming, -S, -pidfile, -daemonize, -loadvm.
// Its -serial outputs become "null" (the device stays, so the device set is
// unchanged), except the first, which becomes SerialPath when one is given.
// The user's Args come last and unchanged. -m anywhere must equal ram_size.
//
// A sparse replay maps I.ram: frames outside W_I read as zeros, and the
// mount counts each such read as a working-set miss. It continues correctly
// only while the guest stays inside the recorded working set.
//
// # Deterministic replay of an interval
//
// Interval re-executes interval I of a deterministic run (run.json
// "deterministic": true, recorded with -icount rr=record) from checkpoint I
// to checkpoint I+1 and verifies it; Run does so for every interval, K at a
// time. The QEMU command line is the recorded one without what the recorder
// added (its RAM backend, -m, QMP, -S, the accelerator, -icount, its
// -plugin; serial outputs go to null), plus
//
//	-accel tcg -m SIZE
//	-object memory-backend-file,id=ram0,size=BYTES,mem-path=MNT/RUN/I.ram,share=off
//	-icount shift=...,rr=replay,rrfile=MNT/RUN/replay.log
//	-S -incoming defer -global migration.send-configuration=off
//	-qmp unix:SOCK,server=on,wait=off [-plugin SO[,ARGS]]...
//
// (full/I.ram with Full). Then migrate-incoming "exec:cat I.dev" (the
// device state xen-save-devices-state saved: no RAM, no configuration
// section; QEMU's "Expected vmdescription section" is expected noise),
// query-migrate until "completed", replay-break at I+1's icount, cont, the
// STOP event, and query-replay must give that icount. Then the verifier
// reads every frame of W_I from QEMU's mapping of the RAM file through
// /proc/PID/mem (QEMU is a child, so ptrace access is allowed) and compares
// it with full/I+1.ram. It reads W_I only: the other frames are holes of
// I.ram, whose reads the mount counts as misses, and they did not change.
// Verified means the icount was reached, no frame differs, and I.json's
// miss counters did not grow up to the STOP. They are read again after the
// verification: holes read in between are the verifier's (the mount logs
// the reader's pid), reported as verify_hole_reads, and do not fail it.
//
// With PrecisionPlugin the working-set plugin (kvmrec/wsplugin) is loaded
// into the replay with mem=on and a counters file of its own: it marks
// every frame whose code the replay ran and every frame it loaded or stored.
// TouchReport compares that set with W_I: precision = |touched ∩ W_I| /
// |W_I|, a lower bound (QEMU's page-table walks and its own reads when it
// restores the checkpoint pass no plugin), and touched \ W_I, frames W_I
// lacks. A frame in touched \ W_I also makes the replay not verified: the
// page cache can answer a read of a hole without a miss, the plugin sees it.
// An empty touched \ W_I does not prove W_I complete: page-table walks and
// QEMU's own reads pass no plugin; the mount's misses and the comparison
// with checkpoint I+1 catch those.
//
// The replay needs replay.log up to the log position of checkpoint I+1:
// file_offset of the "replay" vmstate section of I+1.dev
// (internal/replaypos). While a recording runs QEMU buffers its log, so a
// log that does not reach past that offset is refused with ErrLogNotReady
// (the recorder waits for the log before it commits a checkpoint, so this
// is rare).
//
// A diverged replay never stops and ignores SIGTERM. Every wait runs under
// the deadline (DefaultDeadline: at least 10 min, or 60 s + 1 s per million
// instructions), after which QEMU's process group is killed with SIGKILL and
// reaped. docs/BENCHMARKS.md has load, replay and verification times.
//
// Run's memory figure is the largest sum of VmRSS of the QEMUs replaying
// at once, sampled every 20 ms from exec to STOP, and the same for their
// guest-RAM mappings alone (smaps). With Compare the full pass loads each
// full/I.ram whole before it replays (prealloc=on), as a conventional
// restore does, so its figures are the baseline sparse replays save on;
// beside them Run reports W/RAM of the replays running together (the sum
// of their |W_I| over Jobs × RAM), which the sparse guest-RAM figure
// approaches and QEMU's own memory separates the whole-process figure from.
//
// # The bench: four loaders
//
// Bench replays each interval i (default: every interval with a working
// set) with four loaders, in child processes:
//
//	(a) full eager   read all of full/i.ram into anonymous memory (pread, 4 MiB)
//	(b) sparse eager open i.ram, read i.ws, then only W_i's runs of i.ram into
//	                 anonymous memory (FADV_RANDOM: no readahead into the holes)
//	(c) lazy         open and mmap i.ram (MAP_PRIVATE, PROT_READ) and touch one
//	                 byte of every W_i frame; the mount prefetches W_i on open
//	(d) lazy, no prefetch: as (c) on NoPrefetchMount (--prefetch none);
//	                 skipped with a note when that mount is not given
//
// The eager loaders fault their destination in with one
// madvise(MADV_POPULATE_WRITE) per run before the pread: a classic loader
// that lets pread fault 4 KiB at a time takes a fault per frame inside the
// copy, several times slower (docs/DECISIONS.md), and a baseline that slow
// would flatter the reductions.
//
// Load time is the time from the start signal to the last frame loaded or
// touched, including open, mmap and, for (b), reading and parsing i.ws. The
// lazy modes read i.ws before the clock starts: they stand in for a guest
// that touches W_i, which needs no list.
//
// On the mount, opening i.ram starts the prefetch of W_i, for (b) as much
// as for (c); full/i.ram is not prefetched. In a directory that is not a
// FUSE file system nobody prefetches, so (b) and (c) emulate the mount
// (PrefetchAuto): right after open they ask for W_i with
// posix_fadvise(WILLNEED) per run, inside the timed load. The report says so.
//
// # What is measured
//
//   - Footprint per replay: what the replay needs resident. For (a) and (b)
//     the private copy: the Rss of the anonymous mapping, from
//     /proc/self/smaps (exact per mapping, free of the Go runtime's noise;
//     transparent huge pages are off for it, so it counts 4 KiB frames).
//     For (c) and (d) the page cache of the mapped file, from mincore(2):
//     it backs the mapping, and it includes what the kernel read around a
//     fault. Without prefetch, read-around caches holes next to W_i too (on
//     a mount, each such hole read is a working-set miss), so (d) can be
//     much larger than W_i; with W_i already cached, faults hit and nothing
//     is read around.
//   - Also per replay: the page cache an eager load leaves behind
//     (reclaimable, not counted as footprint), the child's VmRSS growth,
//     bytes read and major faults.
//   - Concurrency K (default 1, 4, 16): batches of K children start their
//     loads together, child j of batch b replaying interval
//     ivs[(b*K+j) mod n], so every interval is replayed at least once and
//     every batch is full. All children of a batch stay alive until the last
//     one has measured, so their memory is resident at the same time. The
//     report gives per-replay means (over all replays, hence over intervals)
//     and the mean total footprint of a batch: the sum of the private copies,
//     plus the page cache of each distinct file once (mappings of one file
//     share it). Reductions are 1 - x/(a) at the same K.
//   - A (mode, K) whose estimate (K × RAM for (a), K × the largest W_i
//     otherwise) exceeds MemoryLimit (default 80 % of MemAvailable) is
//     skipped with a note rather than pushing the machine into the OOM
//     killer.
//   - The floor (BenchReport.Floor), after (a) at K=1 was measured: one
//     child per interval fills fresh anonymous memory of W_i's size
//     (MADV_POPULATE_WRITE, then a copy from a buffer that stays in the CPU
//     cache), and one fills memory of the RAM size. No file, no page cache,
//     no store: only what a loader of W_i pays at least on this machine.
//     1 - WS/(a) is then the largest load reduction (b) or (c) could show
//     here, and RAM/(a) how much of (a) is the same work. On a virtual
//     machine where a fresh page costs a trap per 4 KiB, a load is mostly
//     this work, and the reductions approach 1 - |W_i|/RAM from above.
//
// # Cold starts
//
// By default (DropAll) every batch starts cold: the parent empties the
// block cache of the process serving the mount (BenchConfig.DropStore; the
// CLI finds that process through MNT/.status and the store's socket) and
// then writes 3 to /proc/sys/vm/drop_caches (root only; it drops all clean
// page cache, dentries and inodes of the machine, including the mount's
// FUSE pages and its store's files, and is not preceded by sync), and every
// child drops its file's page cache with posix_fadvise(DONTNEED) when it
// exits. Without DropStore the serving process keeps the blocks the first
// batch read in its own memory, and later batches (of every mode) load from
// there instead of from disk; the report notes it. DropFiles (and DropAll
// without root, which the report notes) does only the fadvise: kind to the
// rest of the machine, but the store behind a mount stays warm and the
// first batch may find warm files; the report says "cold per file".
// DropNone keeps everything warm, and then a mode finds, and mincore
// counts, the pages an earlier mode read around. tmpfs cannot be dropped: a
// run on tmpfs is always warm. The parent never opens
// a .ram file, since on the mount an open starts the working-set prefetch.
// Other processes that drop caches while a batch runs (benchmarks do) can
// only lower the page-cache figures of unmapped pages; the private copies
// and mapped pages are not affected.
//
// # Warm-up
//
// Before anything is timed, every mode runs once over all intervals at K=1
// with the same drops, and its results are thrown away. The processes
// involved grow their memory on first use (the mount's heap up to its
// budget; on a virtual machine the host backs a guest page when it is
// first touched), and without the warm-up the mode timed first, (a), would
// pay for all of it and make (b) and (c) look better than they are. The
// report notes the warm-up.
//
// # Child processes
//
// No measurement runs in the calling process, which may be the process that
// serves the mount: a process that mmaps a file of its own FUSE mount can
// deadlock, and its own memory would blur the figures. Bench re-executes
// os.Executable() (or BenchConfig.Executable) with the job in the
// environment variable CKPTFS_REPLAY_CHILD; MaybeRunChild, called first in
// main and in TestMain, recognises it, runs the job and exits. The child
// prints a ready line, loads when the parent writes "go", prints its result
// as one JSON line, and holds its memory until the parent closes its stdin.
// A binary that does not call MaybeRunChild never prints the ready line and
// Bench fails with ErrChild. Children die with the parent (PR_SET_PDEATHSIG).
// The parent itself only stats files and reads run.json, i.ws and i.json.
//
// # Files
//
// qemu.go starts a QEMU that continues a checkpoint, qemuargs.go builds
// its command line from the recorded one. interval.go replays one
// interval, intervalplan.go checks what it needs first, intervalargs.go
// builds the replay's QEMU arguments, verify.go compares the frames,
// touched.go reads what the working-set plugin saw a replay touch (precision),
// runall.go replays every interval of a run (slurm.go as a Slurm job
// array, a task per interval, whose reports it collects), rsssampler.go samples the
// replays' memory (guestram.go the guest-RAM part of it), runreport.go
// prints both reports. For the bench:
// benchmodes.go and benchconfig.go say what to measure, bench.go runs the
// batches, childbatch.go starts and talks to the children, child.go and
// loader.go are a child's side, procfs.go reads /proc, benchreport.go and
// benchoutput.go hold and print the results. layout.go reads the mount's
// files.
package replay
