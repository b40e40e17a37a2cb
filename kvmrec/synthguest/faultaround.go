package synthguest

import (
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The kernel maps up to 16 neighbouring page-cache pages on a read fault of
// a shared file mapping (fault-around), so a pagemap tracker sees them as
// touched although the guest never did. It skips fault-around on a mapping
// registered with userfaultfd in write-protect mode (the kernel must keep
// such a mapping's page-table entries one by one). Registering without
// protecting any page changes nothing else: no fault is ever reported, the
// descriptor is never read. A VMM could do the same for its guest RAM;
// QEMU does not, so its recorded working sets keep the superset.

// Userfaultfd ABI (linux/userfaultfd.h); x/sys/unix does not have it.
const (
	uffdAPI               = 0xAA
	uffdFeatureWPShmem    = 1 << 12 // UFFD_FEATURE_WP_HUGETLBFS_SHMEM
	uffdUserModeOnly      = 1       // UFFD_USER_MODE_ONLY: allowed without privilege
	uffdRegisterModeWP    = 1 << 1
	uffdioAPIRequest      = 0xc018aa3f // _IOWR(0xAA, 0x3F, struct uffdio_api)
	uffdioRegisterRequest = 0xc020aa00 // _IOWR(0xAA, 0x00, struct uffdio_register)
)

type uffdioAPIArg struct{ api, features, ioctls uint64 }

type uffdioRegisterArg struct{ start, len, mode, ioctls uint64 }

// disableFaultAround registers ram with a new userfaultfd in write-protect
// mode and returns the descriptor, which must stay open as long as the
// registration should hold.
func disableFaultAround(ram []byte) (int, error) {
	fd, _, e := unix.Syscall(unix.SYS_USERFAULTFD, unix.O_CLOEXEC|unix.O_NONBLOCK|uffdUserModeOnly, 0, 0)
	if e != 0 {
		return -1, fmt.Errorf("userfaultfd: %w", e)
	}
	api := uffdioAPIArg{api: uffdAPI, features: uffdFeatureWPShmem}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioAPIRequest, uintptr(unsafe.Pointer(&api))); e != 0 {
		unix.Close(int(fd))
		return -1, fmt.Errorf("userfaultfd write-protect on shared memory: %w", e)
	}
	reg := uffdioRegisterArg{start: uint64(uintptr(unsafe.Pointer(&ram[0]))), len: uint64(len(ram)), mode: uffdRegisterModeWP}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, fd, uffdioRegisterRequest, uintptr(unsafe.Pointer(&reg))); e != 0 {
		unix.Close(int(fd))
		return -1, fmt.Errorf("userfaultfd register: %w", e)
	}
	return int(fd), nil
}
