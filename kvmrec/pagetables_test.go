package kvmrec

import (
	"encoding/binary"
	"slices"
	"testing"
)

// guestMem is guest-physical memory for the walker: frames by number.
type guestMem map[uint64][]byte

func (m guestMem) set64(frame uint64, idx int, v uint64) {
	if m[frame] == nil {
		m[frame] = make([]byte, pageSize)
	}
	binary.LittleEndian.PutUint64(m[frame][8*idx:], v)
}

func (m guestMem) read(pa uint64, b []byte) error {
	f := m[pa/pageSize]
	if f == nil {
		clear(b)
		return nil
	}
	copy(b, f[pa%pageSize:])
	return nil
}

func TestPageTableFramesLongMode(t *testing.T) {
	m := guestMem{}
	const (
		pml4 = 10
		pdpt = 11
		pd   = 12
		pt   = 13
		pt2  = 14
		pd2  = 15
	)
	m.set64(pml4, 0, pdpt<<12|0x67)
	m.set64(pml4, 511, pdpt<<12|0x63) // shared lower table, visited once
	m.set64(pml4, 3, 900000<<12|0x63) // beyond RAM: skipped
	m.set64(pml4, 4, 16<<12|0x62)     // not present: skipped
	m.set64(pdpt, 0, pd<<12|0x63)
	m.set64(pdpt, 1, 1<<30|0xe3) // a 1 GiB page: not a table
	m.set64(pdpt, 2, pd2<<12|0x63)
	m.set64(pd, 0, pt<<12|0x63)
	m.set64(pd, 1, 2<<21|0xe3) // a 2 MiB page
	m.set64(pd, 2, 1<<63|pt2<<12|0x63)
	m.set64(pt, 0, 77<<12|0x63) // a data frame: not a table
	regs := []pagingRegs{{cr0: 0x80050033, cr3: pml4 << 12, cr4: 0x6b0, efer: 0xd01}}
	got, err := pageTableFrames(m.read, 1000, regs)
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{pml4, pdpt, pd, pt, pt2, pd2}; !slices.Equal(got, sorted(want)) {
		t.Fatalf("tables %v, want %v", got, sorted(want))
	}
	regs[0].cr0 &^= cr0PG
	if got, _ := pageTableFrames(m.read, 1000, regs); len(got) != 0 {
		t.Fatalf("without paging: %v", got)
	}
}

func TestPageTableFrames32(t *testing.T) {
	m := guestMem{}
	m[20] = make([]byte, pageSize)
	binary.LittleEndian.PutUint32(m[20][0:], 21<<12|0x67)
	binary.LittleEndian.PutUint32(m[20][4:], 4<<22|0xe7)  // a 4 MiB page with PSE
	binary.LittleEndian.PutUint32(m[20][8:], 22<<12|0x66) // not present
	got, err := pageTableFrames(m.read, 100, []pagingRegs{{cr0: 0x80000011, cr3: 20 << 12, cr4: cr4PSE}})
	if err != nil || !slices.Equal(got, []uint64{20, 21}) {
		t.Fatalf("tables %v, %v", got, err)
	}
	// PAE: a 32-byte PDPT in frame 30 at offset 0x20.
	m.set64(30, 4, 31<<12|1)
	m.set64(31, 0, 32<<12|0x63)
	got, err = pageTableFrames(m.read, 100, []pagingRegs{{cr0: 0x80000011, cr3: 30<<12 | 0x20, cr4: cr4PAE}})
	if err != nil || !slices.Equal(got, []uint64{30, 31, 32}) {
		t.Fatalf("PAE tables %v, %v", got, err)
	}
}

func TestParsePagingRegs(t *testing.T) {
	out := sampleRegisters + "EFER=0000000000000d01\n" + "CPU#1\nCR0=00000011 CR2=00000000 CR3=00000000 CR4=00000000\nEFER=0000000000000000\n"
	regs, err := parsePagingRegs(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 2 || regs[0].cr3 != 0x2b2e000 || regs[0].efer != 0xd01 || regs[0].cr0 != 0x80050033 || regs[1].cr0 != 0x11 {
		t.Fatalf("parsed %+v", regs)
	}
	if _, err := parsePagingRegs(sampleRegisters); err == nil {
		t.Fatal("registers without EFER parsed")
	}
}

func sorted(s []uint64) []uint64 {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}
