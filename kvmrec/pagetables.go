package kvmrec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// QEMU's TCG caches guest address translations in its software TLB, and a
// TLB entry survives a pause: an interval that keeps using it walks no page
// table, so the host page table never sees those page-table frames touched.
// A replay starts with an empty TLB and walks them. The working set of a
// deterministic recording therefore holds every page-table frame the vCPUs'
// CR3 reach at the checkpoint that starts the interval: the walks a replay
// may make before its first address-space switch use only those (a switch
// empties the TLB, in the recording as in the replay, so later walks are
// seen). This is a superset of what is walked; page tables are a few dozen
// frames against thousands in a working set.

var (
	reCR3  = regexp.MustCompile(`CR3=([0-9a-f]+)`)
	reCR4  = regexp.MustCompile(`CR4=([0-9a-f]+)`)
	reEFER = regexp.MustCompile(`EFER=([0-9a-f]+)`)
)

// pagingRegs are the registers that define one vCPU's address translation.
type pagingRegs struct {
	cr0, cr3, cr4, efer uint64
}

const (
	cr0PG   = 1 << 31
	cr4PSE  = 1 << 4
	cr4PAE  = 1 << 5
	cr4LA57 = 1 << 12
	eferLMA = 1 << 10

	ptePresent = 1 << 0
	ptePS      = 1 << 7
	pteAddr64  = 0x000ffffffffff000
)

// maxPageTables bounds a walk of a damaged or hostile table tree.
const maxPageTables = 1 << 18

// parsePagingRegs reads CR0, CR3, CR4 and EFER of every vCPU from `info
// registers -a`.
func parsePagingRegs(out string) ([]pagingRegs, error) {
	var regs []pagingRegs
	for _, block := range strings.Split(out, "CPU#")[1:] {
		var r pagingRegs
		for _, f := range []struct {
			name string
			re   *regexp.Regexp
			v    *uint64
		}{{"CR0", reCR0, &r.cr0}, {"CR3", reCR3, &r.cr3}, {"CR4", reCR4, &r.cr4}, {"EFER", reEFER, &r.efer}} {
			m := f.re.FindStringSubmatch(block)
			if m == nil {
				return nil, fmt.Errorf("`info registers` shows no %s", f.name)
			}
			*f.v, _ = strconv.ParseUint(m[1], 16, 64)
		}
		regs = append(regs, r)
	}
	if len(regs) == 0 {
		return nil, errors.New("`info registers` named no vCPU")
	}
	return regs, nil
}

// pageTableWalker collects the frames of a guest's page-table tree, reading
// guest-physical memory through read.
type pageTableWalker struct {
	read   func(pa uint64, b []byte) error
	frames uint64 // guest RAM size in frames; tables beyond it are skipped
	seen   map[uint64]bool
	buf    [pageSize]byte
}

// pageTableFrames returns the sorted frames of every page table reachable
// from the CR3 of the given vCPUs.
func pageTableFrames(read func(pa uint64, b []byte) error, frames uint64, regs []pagingRegs) ([]uint64, error) {
	w := &pageTableWalker{read: read, frames: frames, seen: map[uint64]bool{}}
	for _, r := range regs {
		if err := w.walkRoot(r); err != nil {
			return nil, err
		}
	}
	out := make([]uint64, 0, len(w.seen))
	for p := range w.seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

func (w *pageTableWalker) walkRoot(r pagingRegs) error {
	switch {
	case r.cr0&cr0PG == 0:
		return nil // no paging
	case r.efer&eferLMA != 0:
		levels := 4
		if r.cr4&cr4LA57 != 0 {
			levels = 5
		}
		return w.walk64(r.cr3&pteAddr64, levels)
	case r.cr4&cr4PAE != 0:
		// The 32-byte PDPT of 4 entries, each naming a page directory.
		pdpt := r.cr3 & 0xffffffe0
		if !w.visit(pdpt / pageSize) {
			return nil
		}
		if err := w.read(pdpt&^(pageSize-1), w.buf[:]); err != nil {
			return err
		}
		off := pdpt & (pageSize - 1)
		var dirs []uint64
		for k := uint64(0); k < 4; k++ {
			e := binary.LittleEndian.Uint64(w.buf[off+8*k:])
			if e&ptePresent != 0 {
				dirs = append(dirs, e&pteAddr64)
			}
		}
		for _, d := range dirs {
			if err := w.walk64(d, 2); err != nil {
				return err
			}
		}
		return nil
	default:
		return w.walk32(r.cr3&0xfffff000, r.cr4&cr4PSE != 0)
	}
}

// visit marks the table at frame p and reports whether it is new and in RAM.
func (w *pageTableWalker) visit(p uint64) bool {
	if p >= w.frames || w.seen[p] || len(w.seen) >= maxPageTables {
		return false
	}
	w.seen[p] = true
	return true
}

// walk64 walks a table of 512 eight-byte entries at physical address pa,
// levels levels above the frames it maps (1: a page table).
func (w *pageTableWalker) walk64(pa uint64, levels int) error {
	if !w.visit(pa / pageSize) {
		return nil
	}
	if levels == 1 {
		return nil
	}
	if err := w.read(pa, w.buf[:]); err != nil {
		return err
	}
	var next []uint64
	for k := 0; k < 512; k++ {
		e := binary.LittleEndian.Uint64(w.buf[8*k:])
		if e&ptePresent == 0 || (levels <= 3 && e&ptePS != 0) {
			continue // absent, or a 1 GiB or 2 MiB page
		}
		next = append(next, e&pteAddr64)
	}
	for _, n := range next {
		if err := w.walk64(n, levels-1); err != nil {
			return err
		}
	}
	return nil
}

// walk32 walks a 32-bit page directory (1024 four-byte entries).
func (w *pageTableWalker) walk32(pa uint64, pse bool) error {
	if !w.visit(pa / pageSize) {
		return nil
	}
	if err := w.read(pa, w.buf[:]); err != nil {
		return err
	}
	var tables []uint64
	for k := 0; k < 1024; k++ {
		e := uint64(binary.LittleEndian.Uint32(w.buf[4*k:]))
		if e&ptePresent == 0 || (pse && e&ptePS != 0) {
			continue
		}
		tables = append(tables, e&0xfffff000)
	}
	for _, t := range tables {
		w.visit(t / pageSize)
	}
	return nil
}

// pageTableSpans returns the page-table frames that the vCPUs' paging
// registers (`info registers -a`, as settleBoundary last read it) reach,
// read from the RAM file.
func (r *recorder) pageTableSpans(info string) ([]span, error) {
	regs, err := parsePagingRegs(info)
	if err != nil {
		return nil, err
	}
	read := func(pa uint64, b []byte) error {
		_, err := r.ram.ReadAt(b, int64(pa))
		return err
	}
	frames, err := pageTableFrames(read, r.frames, regs)
	if err != nil {
		return nil, fmt.Errorf("reading the guest's page tables: %w", err)
	}
	var spans []span
	for _, p := range frames {
		spans = appendSpan(spans, span{p, p + 1})
	}
	return spans, nil
}
