/*
 * ckptfs working-set plugin for QEMU's TCG (plugin API version 1).
 *
 * Guest code that QEMU runs from its translation cache never touches guest
 * RAM again, so the host page table (the pagemap tracker) cannot see it.
 * This plugin counts, per frame of the RAM backend, the executions of every
 * translated block that holds code of that frame: one inline add per frame
 * and block, no callback. The counters live in a file that the recorder maps
 * too; while the VM is paused it reads the frames with a non-zero counter and
 * zeroes them. Loads, stores and QEMU's page-table walks go through the host
 * mapping and stay with the pagemap tracker.
 *
 * At the first translation after each pause the plugin resets itself when
 * the recorder has bumped the generation word, which flushes QEMU's whole
 * translation cache (see maybe_flush): each interval then translates, and so
 * reads from guest RAM, all the code it runs.
 *
 * With wp=on the plugin also registers the RAM mapping with a userfaultfd in
 * write-protect mode and protects nothing: the kernel then skips fault-around
 * on it, so the host page table shows exactly the 4 KiB frames that were
 * touched instead of 64 KiB blocks around them.
 *
 * With mem=on (for replays: it costs a callback per load and store) the
 * plugin also marks every frame the guest loads from or stores to, by guest
 * physical address, so that the counters hold every frame the guest
 * executed, read or wrote; QEMU's page-table walks stay invisible.
 *
 * Arguments: ram=PATH (the memory backend's mem-path), counters=PATH (a file
 * of 8 bytes per frame of the RAM size and TRAILER_WORDS more, below),
 * wp=on|off (default on), random=on (MADV_RANDOM on guest RAM, for replays
 * from a sparse file: see disable_read_around; without counters= the
 * plugin does only that), mem=on|off (default off).
 *
 * Debian's QEMU ships no qemu-plugin.h: the few declarations used are below.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/userfaultfd.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct {
	const char *target_name;
	struct { int min, cur; } version;
	bool system_emulation;
	union { struct { int smp_vcpus, max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*vcpu_cb_t)(qemu_plugin_id_t id, unsigned int vcpu_index);
typedef void (*simple_cb_t)(qemu_plugin_id_t id);
typedef uint32_t qemu_plugin_meminfo_t;
struct qemu_plugin_hwaddr;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS };
enum qemu_plugin_mem_rw { QEMU_PLUGIN_MEM_RW = 3 };
typedef void (*mem_cb_t)(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata);

void qemu_plugin_register_vcpu_init_cb(qemu_plugin_id_t id, vcpu_cb_t cb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb,
	enum qemu_plugin_op op, void *ptr, uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
void *qemu_plugin_insn_haddr(const struct qemu_plugin_insn *insn);
void qemu_plugin_reset(qemu_plugin_id_t id, simple_cb_t cb);
void qemu_plugin_register_vcpu_mem_cb(struct qemu_plugin_insn *insn, mem_cb_t cb,
	enum qemu_plugin_cb_flags flags, enum qemu_plugin_mem_rw rw, void *userdata);
struct qemu_plugin_hwaddr *qemu_plugin_get_hwaddr(qemu_plugin_meminfo_t info, uint64_t vaddr);
bool qemu_plugin_hwaddr_is_io(const struct qemu_plugin_hwaddr *haddr);
uint64_t qemu_plugin_hwaddr_phys_addr(const struct qemu_plugin_hwaddr *haddr);

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

#define FRAME_SHIFT 12

static char ram_path[PATH_MAX];
static uintptr_t ram_base;   /* host address of the RAM mapping, 0 until found */
static uint64_t ram_frames;
static uint64_t *counters;   /* one per frame, shared with the recorder */
static uint64_t *trailer;    /* the words after the counters, see below */
static uint64_t seen_generation;
static bool resetting;

/* The counters file ends with TRAILER_WORDS words after the per-frame
 * counters: the generation the recorder bumps at every pause, then the
 * plugin's counts of translated blocks and of cache flushes. */
enum { GEN_WORD, TRANSLATED_WORD, FLUSHED_WORD, TRAILER_WORDS };
static bool want_wp = true;
static bool want_random;     /* random=on: no read-around on guest RAM */
static bool want_mem;
static bool located_failed;

static void say(const char *fmt, const char *arg)
{
	/* qemu_plugin_outs only reaches QEMU's log with -d plugin. */
	fprintf(stderr, fmt, arg);
}

/* The kernel skips fault-around on a mapping registered for write-protect
 * faults; nothing is ever protected, so no fault is ever reported. */
static void disable_fault_around(void)
{
	int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY);
	if (fd < 0) {
		say("ckptfs-ws: userfaultfd: %s; working sets keep fault-around\n", strerror(errno));
		return;
	}
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
	struct uffdio_register reg = {
		.range = { .start = ram_base, .len = ram_frames << FRAME_SHIFT },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};
	if (ioctl(fd, UFFDIO_API, &api) < 0 || ioctl(fd, UFFDIO_REGISTER, &reg) < 0) {
		say("ckptfs-ws: userfaultfd write-protect: %s; working sets keep fault-around\n", strerror(errno));
		close(fd);
		return;
	}
	/* fd stays open for the life of QEMU: closing it ends the registration. */
}

/* In a replay from a sparse <i>.ram, the kernel's read-around on a page
 * fault would read holes next to the faulting frame that the guest never
 * touches, and the mount would count them as working-set misses. With
 * MADV_RANDOM a fault reads only its own page, so every hole the mount is
 * asked for is one the replay touched. It changes no memory contents. */
static void disable_read_around(void)
{
	if (madvise((void *)ram_base, ram_frames << FRAME_SHIFT, MADV_RANDOM) < 0)
		say("ckptfs-ws: madvise(MADV_RANDOM): %s; reads around faults stay on\n", strerror(errno));
}

/* locate finds the RAM backend's mapping in /proc/self/maps. QEMU maps it
 * after plugins are installed, so this runs when the first vCPU starts. */
static bool locate(void)
{
	if (ram_base)
		return true;
	if (located_failed)
		return false;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return false;
	char line[PATH_MAX + 256];
	while (fgets(line, sizeof line, f)) {
		unsigned long lo, hi, off;
		int path_at = 0;
		if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %n", &lo, &hi, &off, &path_at) < 3 || !path_at)
			continue;
		char *p = line + path_at;
		p[strcspn(p, "\n")] = 0;
		if (off == 0 && strcmp(p, ram_path) == 0 && (hi - lo) >> FRAME_SHIFT >= ram_frames) {
			ram_base = lo;
			if (!ram_frames)
				ram_frames = (hi - lo) >> FRAME_SHIFT;
			break;
		}
	}
	fclose(f);
	if (!ram_base) {
		located_failed = true;
		say("ckptfs-ws: %s is not mapped by QEMU; no frames are counted\n", ram_path);
		return false;
	}
	if (want_wp)
		disable_fault_around();
	if (want_random)
		disable_read_around();
	return true;
}

/* vCPUs are created after the RAM backend: locating it here turns
 * fault-around off before the guest (or an incoming migration) runs. */
static void vcpu_init(qemu_plugin_id_t id, unsigned int vcpu_index)
{
	(void)id;
	(void)vcpu_index;
	locate();
}

static void mark(struct qemu_plugin_tb *tb, uintptr_t h, uint64_t *last)
{
	if (h < ram_base)
		return;
	uint64_t pfn = (h - ram_base) >> FRAME_SHIFT;
	if (pfn >= ram_frames || pfn == *last)
		return;
	*last = pfn;
	qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &counters[pfn], 1);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);

static void flushed(qemu_plugin_id_t id)
{
	qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
	trailer[FLUSHED_WORD]++;
	resetting = false;
}

/* A block stays in QEMU's translation cache across pauses and then never
 * reads guest RAM again: an interval that runs it leaves no trace in the
 * host page table, and the tail of an instruction that crosses into the
 * next page is in a frame no counter names. So the first translation after
 * every pause (the recorder bumps the generation and changes the blocks'
 * flags, which forces one) resets the plugin, and a reset flushes the whole
 * cache: every block an interval runs is translated, reading its code from
 * guest RAM, within that interval. This runs on the vCPU thread, where the
 * reset can flush; the flush waits for the vCPU to leave the block. */
static void maybe_flush(qemu_plugin_id_t id)
{
	uint64_t gen = __atomic_load_n(&trailer[GEN_WORD], __ATOMIC_RELAXED);
	if (gen == seen_generation || resetting)
		return;
	seen_generation = gen;
	resetting = true;
	/* QEMU writes its record/replay log through a stdio buffer, and an idle
	 * guest fills it slowly (a few KiB per second). Flushing every stream
	 * here, right after the pause, puts the log up to the checkpoint just
	 * taken on disk, where the recorder waits for it before it commits. */
	fflush(NULL);
	qemu_plugin_reset(id, flushed);
}

/* mem_access marks the frame of one load or store. Guest physical
 * addresses below the RAM size are taken as offsets into guest RAM, which
 * holds on pc below the PCI hole; RAM above 4 GiB is not marked. */
static void mem_access(unsigned int vcpu_index, qemu_plugin_meminfo_t info, uint64_t vaddr, void *userdata)
{
	(void)vcpu_index;
	(void)userdata;
	struct qemu_plugin_hwaddr *hw = qemu_plugin_get_hwaddr(info, vaddr);
	if (!hw || qemu_plugin_hwaddr_is_io(hw))
		return;
	uint64_t pfn = qemu_plugin_hwaddr_phys_addr(hw) >> FRAME_SHIFT;
	if (pfn < ram_frames)
		counters[pfn] = 1;
}

/* mem_trans asks for mem_access on every load and store of a block. */
static void mem_trans(struct qemu_plugin_tb *tb)
{
	size_t n = qemu_plugin_tb_n_insns(tb);
	for (size_t i = 0; i < n; i++)
		qemu_plugin_register_vcpu_mem_cb(qemu_plugin_tb_get_insn(tb, i), mem_access,
			QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_MEM_RW, NULL);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
	(void)id;
	if (want_mem)
		mem_trans(tb);
	if (!locate())
		return;
	trailer[TRANSLATED_WORD]++;
	maybe_flush(id);
	uint64_t last = UINT64_MAX;
	size_t n = qemu_plugin_tb_n_insns(tb);
	for (size_t i = 0; i < n; i++) {
		struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
		uintptr_t h = (uintptr_t)qemu_plugin_insn_haddr(insn);
		if (!h)
			continue;
		/* An instruction that crosses into the next guest page has its
		 * tail there, which need not be the next frame; the block's
		 * later instructions, if any, name that frame themselves. */
		mark(tb, h, &last);
	}
}

__attribute__((visibility("default")))
int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
	const char *counters_path = NULL;
	(void)info;
	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "ram=", 4) == 0) {
			if (!realpath(argv[i] + 4, ram_path))
				snprintf(ram_path, sizeof ram_path, "%s", argv[i] + 4);
		} else if (strncmp(argv[i], "counters=", 9) == 0) {
			counters_path = argv[i] + 9;
		} else if (strcmp(argv[i], "wp=off") == 0) {
			want_wp = false;
		} else if (strcmp(argv[i], "random=on") == 0) {
			want_random = true;
		} else if (strcmp(argv[i], "mem=on") == 0 || strcmp(argv[i], "mem=off") == 0) {
			want_mem = strcmp(argv[i], "mem=on") == 0;
		} else if (strcmp(argv[i], "wp=on") != 0) {
			say("ckptfs-ws: unknown argument %s (ram=, counters=, wp=, random=, mem=)\n", argv[i]);
			return -1;
		}
	}
	if (!ram_path[0]) {
		say("ckptfs-ws: %s\n", "ram=PATH is required");
		return -1;
	}
	if (!counters_path) {
		if (!want_random) {
			say("ckptfs-ws: %s\n", "counters=PATH is required unless random=on");
			return -1;
		}
		/* A replay's helper: turn read-around off, count nothing. */
		want_wp = false;
		qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
		return 0;
	}
	int fd = open(counters_path, O_RDWR | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0 || st.st_size < 8) {
		say("ckptfs-ws: cannot use counters file %s\n", counters_path);
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (st.st_size < 8 * (TRAILER_WORDS + 1)) {
		say("ckptfs-ws: counters file %s is too short\n", counters_path);
		close(fd);
		return -1;
	}
	ram_frames = (uint64_t)st.st_size / 8 - TRAILER_WORDS;
	counters = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	if (counters == MAP_FAILED) {
		say("ckptfs-ws: mmap %s failed\n", counters_path);
		return -1;
	}
	trailer = counters + ram_frames;
	seen_generation = trailer[GEN_WORD];
	qemu_plugin_register_vcpu_init_cb(id, vcpu_init);
	qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
	return 0;
}
