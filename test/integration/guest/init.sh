#!/bin/sh
# /init of the ckptfs test guest (busybox-static, built by build-guest.sh).
#
# Forever: print "ckptfs-tick N" on ttyS0 (N = 1, 2, 3, ... strictly increasing)
# roughly every 100-200 ms, and rewrite DATA_MIB MiB of a tmpfs file in place
# with data that depends on N, so guest memory keeps changing every tick.
# The counter lives in this shell's memory, so a guest restored from a
# checkpoint continues counting where the checkpoint left it.
export PATH=/bin:/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mkdir -p /run/work
mount -t tmpfs -o size=64m tmpfs /run/work

# Quiet kernel console messages so they do not interleave with tick lines.
dmesg -n 1 2>/dev/null || true

DATA_MIB=4
PERIOD_US=100000
for arg in $(cat /proc/cmdline); do
	case "$arg" in
	ckptfs.data_mib=*) DATA_MIB=${arg#*=} ;;
	ckptfs.period_us=*) PERIOD_US=${arg#*=} ;;
	esac
done

echo "ckptfs-init data_mib=$DATA_MIB period_us=$PERIOD_US" >/dev/ttyS0

# cat of files is much cheaper under TCG than piping MiBs through yes|head
# (measured: ~40 ms for 4 MiB against ~480 ms), so build a 64 KiB block, a
# 1 MiB block from it, and DATA_MIB MiB from that.
mibs=""
i=0
while [ "$i" -lt "$DATA_MIB" ]; do
	mibs="$mibs c1m"
	i=$((i + 1))
done
k16="c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64 c64"

cd /run/work
n=0
while :; do
	n=$((n + 1))
	yes "ckptfs-data $n" | head -c 65536 >c64
	cat $k16 >c1m
	# In place (<> does not truncate), so the same tmpfs pages are rewritten.
	[ -n "$mibs" ] && cat $mibs 1<>data
	echo "ckptfs-tick $n" >/dev/ttyS0
	usleep "$PERIOD_US"
done
