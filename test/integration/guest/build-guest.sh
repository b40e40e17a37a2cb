#!/bin/bash
# build-guest.sh OUTDIR
#
# Builds the tiny test guest used by ckptfs's integration tests:
#   OUTDIR/vmlinuz        Debian's cloud kernel (virtio, 8250 serial, tmpfs, devtmpfs built in)
#   OUTDIR/initramfs.gz   busybox-static + /init (see init.sh beside this file)
#
# The guest prints "ckptfs-tick N" (N strictly increasing from 1) on ttyS0 every
# ~100-200 ms and rewrites a few MiB of a tmpfs file with counter-dependent data
# each tick, so guest memory keeps changing.
#
# Idempotent: installs missing Debian packages (qemu-system-x86, busybox-static,
# cpio), downloads the kernel package into OUTDIR, and does nothing at all when
# OUTDIR/.stamp matches the inputs. Every download stays inside OUTDIR.
set -euo pipefail

if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# One build at a time per OUTDIR (test binaries of several packages may call
# this at once).
exec 9>"$OUT/.lock"
flock 9

# The stamp covers this script and the init script, so editing either rebuilds.
want_stamp=$(cat "$HERE/build-guest.sh" "$HERE/init.sh" | sha256sum | cut -d' ' -f1)
if [ -f "$OUT/.stamp" ] && [ "$(cat "$OUT/.stamp")" = "$want_stamp" ] &&
	[ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initramfs.gz" ] &&
	command -v qemu-system-x86_64 >/dev/null; then
	exit 0
fi

log() { echo "build-guest: $*" >&2; }

# 1. Debian packages.
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		log "missing packages ${need[*]} and not root"
		exit 1
	fi
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >/dev/null
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
BUSYBOX=/bin/busybox

# 2. The kernel: the version that the meta package linux-image-cloud-amd64 points to.
if [ ! -s "$OUT/vmlinuz" ] || [ ! -f "$OUT/.stamp" ] || [ "$(cat "$OUT/.stamp")" != "$want_stamp" ]; then
	kpkg=""
	meta_ver=$(apt-cache policy linux-image-cloud-amd64 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -z "$meta_ver" ] || [ "$meta_ver" = "(none)" ]; then
		apt-get update -qq >/dev/null
		meta_ver=$(apt-cache policy linux-image-cloud-amd64 | awk '/Candidate:/ {print $2}')
	fi
	kpkg=$(apt-cache show "linux-image-cloud-amd64=$meta_ver" |
		sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*-cloud-amd64\).*/\1/p' | head -n1)
	if [ -z "$kpkg" ]; then
		log "cannot resolve the kernel package of linux-image-cloud-amd64 $meta_ver"
		exit 1
	fi
	mkdir -p "$OUT/dl"
	if ! ls "$OUT/dl/${kpkg}_"*.deb >/dev/null 2>&1; then
		log "downloading $kpkg"
		rm -f "$OUT"/dl/linux-image-*.deb
		# apt-get download as root warns that _apt cannot write here; harmless.
		(cd "$OUT/dl" && apt-get download -qq "$kpkg" 2>&1 | grep -v -e 'unsandboxed' -e '^$' >&2 || true)
	fi
	deb=$(ls "$OUT/dl/${kpkg}_"*.deb 2>/dev/null | head -n1)
	if [ -z "$deb" ]; then
		log "download of $kpkg failed"
		exit 1
	fi
	rm -rf "$OUT/kpkg"
	dpkg -x "$deb" "$OUT/kpkg"
	vmlinuz=$(ls "$OUT"/kpkg/boot/vmlinuz-* | head -n1)
	config=$(ls "$OUT"/kpkg/boot/config-* | head -n1)
	# Everything the guest needs must be built in: no modules in the initramfs.
	for opt in CONFIG_SERIAL_8250=y CONFIG_SERIAL_8250_CONSOLE=y CONFIG_TMPFS=y \
		CONFIG_DEVTMPFS=y CONFIG_BLK_DEV_INITRD=y CONFIG_RD_GZIP=y CONFIG_PROC_FS=y CONFIG_SYSFS=y; do
		if ! grep -qx "$opt" "$config"; then
			log "kernel $kpkg lacks $opt"
			exit 1
		fi
	done
	cp "$vmlinuz" "$OUT/vmlinuz.tmp"
	cp "$config" "$OUT/kernel.config"
	basename "$deb" >"$OUT/kernel.version"
	rm -rf "$OUT/kpkg"
	mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
fi

# 3. The initramfs.
root="$OUT/initramfs.root"
rm -rf "$root"
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc}
cp "$BUSYBOX" "$root/bin/busybox"
for app in $("$BUSYBOX" --list); do
	[ "$app" = busybox ] && continue
	ln -sf busybox "$root/bin/$app"
done
install -m 0755 "$HERE/init.sh" "$root/init"
# Nodes needed before devtmpfs is mounted (the kernel opens /dev/console itself).
mknod -m 600 "$root/dev/console" c 5 1
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 660 "$root/dev/ttyS0" c 4 64
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner=0:0) |
	gzip -9 -n >"$OUT/initramfs.gz.tmp"
mv "$OUT/initramfs.gz.tmp" "$OUT/initramfs.gz"
rm -rf "$root"

echo "$want_stamp" >"$OUT/.stamp"
log "built $OUT/vmlinuz ($(cat "$OUT/kernel.version")) and $OUT/initramfs.gz"
