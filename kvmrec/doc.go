// Package kvmrec records a running QEMU VM as a series of checkpoints in a
// ckptfs store: at every boundary it pauses the VM, finds the frames the
// last interval touched (its working set) and the frames whose content
// changed, copies the changed ones, optionally saves the device state,
// resumes the VM, and then writes and commits the checkpoint.
//
// Record is the entry point; Config describes a recording and Summary its
// result. The VMM is found through its QMP socket: QEMU's pid is the socket
// peer (SO_PEERCRED), the guest RAM is the mapping of Config.MemPath in
// /proc/PID/maps (QEMU: -object memory-backend-file,mem-path=PATH,share=on).
// The synthguest subpackage is a VMM stand-in for tests and benchmarks.
//
// # Files
//
// config.go holds what a caller passes and gets back; record.go the
// boundary loop; storeloop.go the store goroutine; livepacker.go the
// working-set packs. recorder.go attaches to the VMM; pause.go is one pause
// (take) and capture.go what it yields; precopy.go, scan.go, staging.go,
// classifier.go, pagemap.go, pageout.go and punchedholes.go are its parts,
// named as in the sections below; vmm.go finds the RAM mapping, device.go
// saves device state. The deterministic recording adds deterministic.go
// and the files it names.
//
// # A pause, in order
//
//  1. Before stop, with the VM running: wait until the frames left mapped
//     by the last pause are unmapped (see "Deferred unmapping"); reserve
//     staging buffers so that copying never faults; walk the RAM file's
//     holes when it shrank (see "Punched holes"). Before checkpoint 0:
//     unmap every present page of the VMM (nothing is recorded yet).
//     Then (pagemap tracker) the pre-copy (see "Pre-copy"), which leaves
//     the pause only what the VM touches during it; for checkpoint 0 it
//     reads every data frame.
//  2. stop. From here on the VM is always resumed (cont with its own
//     deadline), whatever fails and even when the context is canceled.
//  3. With device state: pass a pipe (getfd) and start `migrate` to it with
//     capability x-ignore-shared, so QEMU saves everything but the shared
//     RAM, in its migration thread, while the recorder works.
//  4. Read /proc/PID/pagemap for the RAM mapping: the present pages, with
//     the deferred frames and what the pre-copy found, are W_{i-1}, the
//     frames interval i-1 touched.
//  5. Read the candidate frames (present, deferred, punched; all data for
//     checkpoint 0 without pre-copy; everything for the hash tracker) with pread, hash each
//     with xxh3-128 and compare with the hash of the last checkpoint; copy
//     the changed ones. Two goroutines split large scans. Meanwhile, a third
//     goroutine unmaps present, unchanged frames (process_madvise
//     MADV_PAGEOUT) as the scan classifies them.
//  6. Wait for the unmapping and the migration stream (EOF, then
//     query-migrate "completed"), and cont. Downtime is stop to cont.
//  7. After cont: unmap the deferred frames in the background; hand the
//     capture to the store goroutine, which Puts the frames and commits.
//
// # Ordering
//
// One store goroutine commits checkpoints strictly in order, one at a time:
// two commits never overlap or reorder. The store write of checkpoint i runs
// while the VM runs interval i (and may overlap pause i+1); the boundary
// loop never waits for it unless two checkpoints are pending (then the next
// boundary waits, and the checkpoint is flagged Lagging). Interval is the
// VM's run time from cont to the next stop, so long pauses do not eat it.
// Cancelling the context completes a pause in progress and commits every
// checkpoint taken; a killed recorder leaves the store as of its last
// commit (index commits are atomic), and the VM paused if it was killed
// inside a pause; the next recording finds it paused, says so in a
// warning and resumes it.
//
// # Pre-copy
//
// Most of a checkpoint's work is done right before the stop, with the VM
// running, in the order that makes it safe: read the pagemap (P1, the
// frames touched so far), unmap exactly the P1 pages (no gaps merged: an
// absent page may be written meanwhile), and only then pread and hash P1
// and the deferred frames and copy the changed ones (hashes kept aside, not
// yet the last checkpoint's). A frame written after its unmap faults, so it
// is present at the stop; a frame that is not present at the stop was not
// written since its unmap, so it holds what the pre-copy read. The pause
// then reads the pagemap again (P2), scans P2 against the last checkpoint's
// hashes, and drops the pre-copied frames it scanned again; W is P1, the
// deferred frames and P2. The pre-copy is like the pre-copy of live
// migration, with the page table in place of a dirty log, and converges in
// one round because the window it leaves is its own run time.
//
// Checkpoint 0 has no last checkpoint to compare with, so its pre-copy
// reads every data frame of the RAM file; the prepass before it has
// emptied the VMM's page table, so the same argument holds: what is not
// present at the stop holds what the pre-copy read. Its pause then copies
// only the frames the VM touched during the pre-copy, not the whole RAM.
//
// The pause is left with what the VM touched while the pre-copy ran, and
// since few frames are left to unmap after cont the default working sets
// are as tight as exact mode's. The price is the guest's re-faults of
// frames it touches during the pre-copy, and the pre-copy's CPU time while
// the VM runs. Config.NoPrecopy turns it off (docs/DECISIONS.md compares
// the pauses).
//
// # Why unmap while the VM is stopped
//
// The pagemap tracker learns that a frame was accessed because its page is
// present in QEMU's page table. After reading the pagemap, the recorder
// unmaps the present pages so that the next access faults them in again.
// If it unmapped a page while the VM runs, a write between the pagemap read
// and the unmap would leave no trace: the page would be absent at the next
// boundary and the changed frame missed. Unmapping while stopped closes
// that window, and it is also far cheaper: with the vCPU threads idle there
// are no TLB shootdowns of busy CPUs (docs/DESIGN.md, "Recording"). The pre-copy unmaps while the VM runs but reads
// only after the unmap, which closes the window another way, and its cost
// is outside the pause.
//
// # Deferred unmapping
//
// Unmapping a page whose page-table entry is dirty (written since it was
// mapped) makes reclaim flush the TLB for that page alone before its
// (failing, without swap) writeout; clean pages share one flush per range
// and 2 MiB. In a virtual machine a remote flush is a hypercall, so
// unmapping many written frames in the pause would make it last longer than
// everything else in it. The recorder therefore unmaps during the pause
// only unchanged present frames, in ranges of at least 16 present frames
// (absent frames between them are free to cover; a changed frame ends a
// range). The changed frames and the small ranges are unmapped right after
// cont, while the VM runs, and are counted as touched in the next interval
// too and hashed at the next pause: an access after cont but before their
// unmap is then neither lost from the working set nor from the dirty set.
// The price is precision of the working sets for workloads that do not touch
// the same frames again. Config.ExactWorkingSets unmaps everything during
// the pause instead (exact up to fault-around, longer pauses).
//
// # Supersets
//
// W_i is a superset of the frames interval i touched, never a subset:
//   - fault-around: a read fault maps up to 16 neighbouring page-cache pages
//     (64 KiB), which look touched. Nothing outside the VMM can turn it
//     off; the synthetic guest turns it off for its own RAM (synthguest,
//     FaultAround), and then exact mode records the frames it touched
//     but for the last case below (TestRecordSynthetic wants a precision
//     of 95 %); a deterministic recording turns it off for QEMU through
//     the working-set plugin;
//   - the deferred frames above;
//   - pages QEMU itself reads or writes (device emulation, the device-state
//     save), which the guest did not;
//   - pages the kernel declined to unmap (not on an LRU list yet, locked).
//
// D_i, the changed frames, is exact: it comes from comparing content hashes.
//
// # Guest RAM is read, never mapped
//
// The recorder reads guest RAM with pread on the file. It never maps it: a
// mapping would add page-table entries of its own that the pagemap tracker
// would have to keep clear, and its CPUs to every TLB flush of the unmap.
//
// # Punched holes
//
// A VMM may punch holes in its RAM file (virtio-balloon, discard): the
// frames read as zeros and are unmapped, so the pagemap cannot show them.
// Before a pause the recorder walks the file's holes (SEEK_DATA/SEEK_HOLE)
// and hashes the frames that are holes but held non-zero content. The walk
// costs time with every extent of the file, so it runs only when the file
// has fewer blocks than after the last pause, and every 16th checkpoint. A frame
// punched between the walk and the stop becomes zero one checkpoint later,
// and a punch hidden by allocations up to 16 checkpoints later: these are
// frames the guest gave away and does not read back.
//
// # Assumptions
//
// The pagemap tracker assumes that nothing but the recorder unmaps guest
// RAM during an interval. Swap and proactive reclaim (a DAMON pageout
// scheme that does not filter mapped pages, DAMON_RECLAIM, memory.reclaim)
// can unmap a page after the guest wrote it, and the write would then be
// missed. Record logs a warning when it finds swap or such a DAMON scheme.
// QEMU must map the RAM file shared and unlocked (no -overcommit
// mem-lock=on: MADV_PAGEOUT refuses locked memory), on tmpfs or
// /dev/shm (MADV_PAGEOUT writes back pages of a disk file). The hash
// tracker has none of these assumptions: it hashes every frame at every
// pause and records no working sets.
//
// # Checkpoint 0
//
// Checkpoint 0 is the whole RAM: every data extent of the file (holes are
// zero). With the pagemap tracker the pre-copy reads it while the VM runs
// (see "Pre-copy"), and the pause copies only what the VM touched
// meanwhile; with the hash tracker or Config.NoPrecopy the pause reads all
// of it, so its downtime grows with the RAM size. Its store write is the
// largest of the run, and the next checkpoint may be Lagging until it is
// committed. Its staging (the whole RAM) says little about an interval:
// checkpoint 1 reserves a quarter of it and maps more chunks as it copies,
// since reserving all of it again would populate memory of the RAM's size
// while checkpoint 0 is still being stored, taking CPU from the store.
//
// # Working-set packs
//
// With Config.PackLive a goroutine of its own builds each interval's pack
// (index.PackInterval) once W_i is committed. Its queue is two intervals
// long; an interval that finds it full is left to the caller's final
// index.PackRun, so packing never delays the store or a pause, only
// shares the CPU and the disk with them.
//
// # Device state
//
// With Config.DeviceState, every checkpoint carries QEMU's migration stream
// without the shared RAM (x-ignore-shared; mostly ROM blocks and device
// registers, docs/DECISIONS.md has sizes). QEMU is left in state "postmigrate" by the
// save and cont runs it on. A restore needs a QEMU with the same command
// line but mem-path=<checkpoint image>,share=off, -incoming defer,
// x-ignore-shared on, and migrate-incoming from the stream.
//
// # Deterministic runs
//
// RecordDeterministic (deterministic.go) starts QEMU itself, so that the
// run holds everything a re-execution of an interval needs. QEMU gets the
// user's machine arguments plus a RAM backend on a private tmpfs directory
// (share=on), -icount shift=auto,rr=record,rrfile=LOG, a QMP socket and the
// working-set plugin; arguments that would conflict (-icount, -qmp,
// -incoming, -mem-path, -daemonize, a memory backend) are refused. It
// records with the pagemap tracker in exact mode (the deferred unmapping
// would add the frames changed in a pause to the next W). At every pause it
// also takes:
//   - the instruction count (query-replay), committed with the checkpoint;
//   - the device state, with xen-save-devices-state (replaystate.go): under
//     record/replay `migrate` aborts QEMU;
//   - the frames whose code ran, from the plugin's counters (exectrack.go):
//     code run from QEMU's translation cache never touches guest RAM again,
//     so the page table cannot show it;
//   - the page-table frames the vCPUs' CR3 reach (pagetables.go): QEMU's
//     software TLB outlives a pause, so the recording may not walk tables
//     that a replay, starting with an empty TLB, does;
//   - a request to flush the translation cache when the VM resumes
//     (tbflush.go), so that every interval translates, and reads from guest
//     RAM, all the code it runs, including the tail of an instruction that
//     crosses into a frame the counters cannot name;
//   - the bytes QEMU appended to its log (replaylog.go), with the header
//     QEMU writes only at exit put in place, so that the stored log is
//     replayable before the recording ends; the commit first waits (at
//     most half an interval, 1 s) for QEMU's buffered log to pass the
//     checkpoint's log position (internal/replaypos), which the plugin's
//     flush of QEMU's stdio streams after the pause puts on disk, so that
//     the interval ending at the checkpoint replays as soon as it is
//     committed.
//
// Before any of that, the pause makes sure no vCPU stands on an interrupt
// handler's first instruction (irqboundary.go): QEMU delivers an interrupt
// pending at a stop before it stops, at the same instruction count, so such
// a checkpoint is one delivery ahead of a replay to its count.
//
// A restore trial (restoretrial.go) adds the frames QEMU touches when it
// loads the checkpoint's device state, which a replay from <i>.ram reads
// too. W_i must hold every frame the replay reads, or the replay diverges.
// After the last checkpoint the recorder quits QEMU and stores the rest of
// the log, marked complete.
package kvmrec
