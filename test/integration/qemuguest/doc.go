// Package qemuguest builds and runs the small QEMU test guest of ckptfs's
// integration tests, and restore_test.go in it proves by experiment the
// restore mechanism that DESIGN.md ("Recording", "The mount") relies on.
//
// # The guest
//
// test/integration/guest/build-guest.sh OUTDIR (Build runs it; the default
// OUTDIR is /var/cache/ckptfs-guest, or $CKPTFS_GUEST_DIR) installs
// qemu-system-x86, busybox-static and cpio when missing, downloads the kernel
// package that Debian's linux-image-cloud-amd64 points to into OUTDIR/dl, and
// writes OUTDIR/vmlinuz and OUTDIR/initramfs.gz (busybox-static plus
// guest/init.sh as /init, no kernel modules: the cloud kernel has 8250
// serial, tmpfs, devtmpfs and gzip initrd built in, and the script checks
// it). A stamp over both scripts makes a repeated build take ~50 ms.
//
// The guest's /init prints "ckptfs-tick N" on ttyS0, N = 1, 2, 3, ... about
// every 130 ms, and every tick rewrites 4 MiB of a tmpfs file in place with
// data that contains N (kernel arguments ckptfs.data_mib=M and
// ckptfs.period_us=U change the amount and the sleep). The counter lives in
// guest RAM, so a restored guest counts on from its checkpoint; a guest that
// booted again would start at 1 after a "ckptfs-init" line. Ticks ignores an
// unterminated last line, so a line cut by a stop is never misread.
//
// Start waits for the QMP greeting, not only for a connect: QEMU creates the
// QMP socket before the memory backend, and the kernel queues connects, so a
// QEMU that fails on its mem-path still "accepts" for a moment.
//
// # Command lines that work (QEMU 7.2.22, Debian 12, TCG, no KVM)
//
// Recording (ArgsFor with Share: true):
//
//	qemu-system-x86_64 -machine pc,accel=tcg -m 256M
//	  -object memory-backend-file,id=ram0,size=256M,mem-path=RAM,share=on
//	  -machine memory-backend=ram0 -nodefaults -no-user-config -display none
//	  -no-reboot -kernel vmlinuz -initrd initramfs.gz
//	  -append 'console=ttyS0 panic=-1 mitigations=off'
//	  -serial file:SERIAL -qmp unix:SOCK,server=on,wait=off
//
// A checkpoint over QMP: stop; migrate-set-capabilities x-ignore-shared=true;
// migrate uri "fd:NAME" (after getfd NAME with the file's fd as SCM_RIGHTS)
// or "exec:cat > DEV"; poll query-migrate until "completed"; copy RAM (any
// time while stopped); cont. The source is in state "postmigrate" after the
// migration, cont runs it on, and the same process can be checkpointed
// again and again (the test takes three).
//
// Restore (ArgsFor with Share: false, Incoming: true): the same command line
// with mem-path=COPY,share=off and -incoming defer, then QMP:
// migrate-set-capabilities x-ignore-shared=true; migrate-incoming uri
// "exec:cat DEV" or "fd:NAME"; poll query-migrate until "completed"; the VM
// is then "paused" (the source was stopped when it saved, and QEMU restores
// that run state), so send cont. The guest continues with the tick after the
// checkpoint's last one (or the one after that when the stop cut a tick
// line), with no boot messages. The same checkpoint restores any number of
// times, and the share=off QEMU never changes the file.
//
// # Findings (restore_test.go checks them; times are for a 2-core TCG host)
//
//   - Boot: the QMP greeting comes 0.07-0.2 s after exec; the first tick
//     3.3-6.2 s after exec. A restore is ready in well under a second: start
//     ~0.1 s, incoming migration 5 ms (fd) to 40-90 ms (exec:), and the
//     guest ticks at its normal rate right after cont.
//   - Device-state stream: 319,748 bytes for a 256 MiB guest, the same for
//     every checkpoint. 206,005 bytes of it are the small RAM blocks that are
//     not ram0 and so are always sent: pc.bios (256 KiB), pc.rom (128 KiB),
//     /rom@etc/acpi/tables (128 KiB used), /rom@etc/table-loader and
//     /rom@etc/acpi/rsdp (4 KiB each). The devices proper are ~110 KiB.
//   - Save time (stop → query-migrate "completed", seen by polling every
//     1 ms): 5-9 ms through a getfd fd (QEMU's total-time 3-5 ms, downtime
//     1-2 ms); 20-60 ms through "exec:cat > FILE" (fork of sh and cat),
//     on the first migration of a process and on later ones alike. stop
//     itself takes ~1 ms. A recorder should pass an fd.
//   - x-ignore-shared skips exactly the RAM blocks that are share=on: a
//     share=off QEMU with the capability on writes ram0 into its stream
//     (~95 MB for this 256 MiB guest). So share=on is needed on the saving
//     side only; the restoring side uses share=off.
//   - The restoring side must set x-ignore-shared too: QEMU 7.2 checks the
//     capabilities in the stream ("Capability x-ignore-shared is off, but
//     received capability is on", then "load of migration failed: Invalid
//     argument", and QEMU exits).
//   - -m and the backend size must match the recording: -m 512M fails with
//     "Size mismatch: ram0: 0x10000000 != 0x20000000". The backend id (ram0,
//     the RAM block name), the machine type and the device set (-nodefaults,
//     the serial port) must be the same as when recording, as for any QEMU
//     migration. "pc" is an alias of pc-i440fx-7.2 here; a recording meant
//     to outlive a QEMU upgrade should name the versioned type.
//   - -kernel/-initrd/-append are not needed to restore: after boot the
//     kernel lives in guest RAM, and the linuxboot option ROM comes through
//     fw_cfg, not as a RAM block. Keeping them costs nothing.
//   - mem-path with share=off: QEMU 7.2 does openat(path, O_RDWR), fstat,
//     lseek(SEEK_END) to learn the size, fstatfs, then
//     mmap(size, PROT_READ|PROT_WRITE, MAP_PRIVATE) and madvise HUGEPAGE,
//     DONTFORK, MERGEABLE. No ftruncate, no fallocate, no write when the
//     file has exactly the RAM size; a smaller file is refused ("backing
//     store size 0x8000000 does not match 'size' option 0x10000000"). In
//     /proc the fd shows O_RDWR and the mapping rw-p. So a file served
//     through the mount must accept an O_RDWR open and report the RAM size.
//   - Read-only mem-path (mode 0444) with share=off: accepted only because
//     of root's CAP_DAC_OVERRIDE. QEMU as root opens it O_RDWR anyway and the
//     restore works; QEMU as an unprivileged user (uid 65534) refuses to
//     start: "can't open backing store ... for guest RAM: Permission
//     denied". Adding readonly=on makes QEMU open O_RDONLY and map r--p; it
//     then starts and the incoming migration completes, but guest writes to
//     RAM are dropped and the guest never ticks again: no way to restore. So
//     on QEMU 7.2 the checkpoint file must be openable O_RDWR (the mount's
//     rule; writes may fail with EROFS since QEMU never writes the file).
//   - share=on on the restoring side restores as well, but the guest's
//     writes go into the checkpoint file: always share=off there.
//   - The RAM file copy of 256 MiB (holes for zero blocks) takes 50-500 ms on
//     this disk; it is the test's stand-in for a checkpoint, not a measure.
package qemuguest
