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
// one round because the window it leaves is its own run time (10-50 ms
// on the test machine).
//
// Checkpoint 0 has no last checkpoint to compare with, so its pre-copy
// reads every data frame of the RAM file; the prepass before it has
// emptied the VMM's page table, so the same argument holds: what is not
// present at the stop holds what the pre-copy read. In `ckptfs demo
// --synthetic` (256 MiB, 50,000 data frames) its pause went from 51 ms, the
// whole copy while stopped, to 2.2 ms after a 52 ms pre-copy; that pause
// was the recording's p99 (now 2.9 ms).
//
// On the test machine (256 MiB synthetic guest, 5 % touched per interval)
// this cut the median pause from 11.4-12.8 ms to 3.2-4.2 ms (and from
// 37-42 ms to 7.6-9.7 ms at 20 %), in the same runs, and since few frames are left to unmap after cont the
// default working sets are as tight as exact mode's. The price is the
// guest's re-faults of frames it touches during the pre-copy, and the
// pre-copy's CPU time while the VM runs. Config.NoPrecopy turns it off.
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
// are no TLB shootdowns of busy CPUs (DESIGN.md measured ≈ 1 ms against
// ≈ 70 ms for 256 MiB). The pre-copy unmaps while the VM runs but reads
// only after the unmap, which closes the window another way, and its cost
// is outside the pause.
//
// # Deferred unmapping
//
// Unmapping a page whose page-table entry is dirty (written since it was
// mapped) makes reclaim flush the TLB for that page alone before its
// (failing, without swap) writeout; clean pages share one flush per range
// and 2 MiB. On this project's test machine (a PVM guest, 2 vCPUs) a remote
// flush is a hypercall of 0.1-0.5 ms, so unmapping 1,600 written frames in
// the pause cost 0.2-0.9 s. The recorder therefore unmaps during the pause
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
//     of 95 %; it measures 99-100 %, against 62 % with fault-around). At
//     20 % touched in runs the superset was 23 % of RAM;
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
// costs 4-160 ms per GiB here, so it runs only when the file has fewer
// blocks than after the last pause, and every 16th checkpoint. A frame
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
// Checkpoint 0 is the whole RAM: the recorder reads every data extent of
// the file (holes are zero) during the pause, so its downtime grows with the
// RAM size (≈ 0.5-1.5 s for 256 MiB on the test machine), and its store
// write takes 1-1.6 s for 1 GiB; the next checkpoint may be Lagging until
// it is committed. Its staging (the whole RAM) says little about an
// interval: checkpoint 1 reserves a quarter of it and maps more chunks as
// it copies. Reserving all of it again cost a 1 GiB guest about 1 GiB of
// freshly populated memory, seconds of CPU taken from the store.
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
// without the shared RAM (x-ignore-shared; ≈ 320 KB for the test guest, of
// which ≈ 200 KB are ROM blocks). QEMU is left in state "postmigrate" by the
// save and cont runs it on. A restore needs a QEMU with the same command
// line but mem-path=<checkpoint image>,share=off, -incoming defer,
// x-ignore-shared on, and migrate-incoming from the stream.
package kvmrec
