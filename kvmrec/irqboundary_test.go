package kvmrec

import "testing"

// A vCPU as QEMU 7.2's `info registers -a` shows it, stopped on the entry
// of the handler of vector 1 of the table below.
const sampleRegisters = `
CPU#0
RAX=0000000000000000 RBX=ffffd455005b3e00 RCX=0000000000000000 RDX=000fffffc008003f
RIP=ffffffff8d400c70 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 0000000000000000 00000000 00000000
CS =0010 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]
GDT=     fffffe0000001000 0000007f
IDT=     fffffe0000000000 00000fff
CR0=80050033 CR2=00000000005a1cdc CR3=0000000002b2e000 CR4=000006b0
`

const sampleIDT = "fffffe0000000000: 0x8d408e0000100990 0x00000000ffffffff\r\nfffffe0000000010: 0x8d408e0300100c70 0x00000000ffffffff\r\n"

func TestHandlerEntry(t *testing.T) {
	cpus, err := parseRegisters(sampleRegisters)
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) != 1 || cpus[0].mode != "CS64" || !cpus[0].pe || cpus[0].idtBase != 0xfffffe0000000000 || cpus[0].idtLimit != 0xfff {
		t.Fatalf("parsed %+v", cpus)
	}
	table, err := parseQwords(sampleIDT)
	if err != nil || len(table) != 4 {
		t.Fatalf("parsed %x, %v", table, err)
	}
	targets := gateTargets(cpus[0], table)
	for _, want := range []uint64{0xffffffff8d400990, 0xffffffff8d400c70} {
		if !targets[want] {
			t.Errorf("gate target %x missing from %v", want, targets)
		}
	}
	if !targets[cpus[0].pc] {
		t.Errorf("the vCPU at %x is not seen on a handler's entry", cpus[0].pc)
	}
	if targets[cpus[0].pc+1] {
		t.Error("an address past an entry is taken for one")
	}

	// Real mode: the vector table holds segment:offset pairs.
	real := vcpuState{pc: 0xf0000 + 0xe987, mode: "CS16"}
	rt := gateTargets(real, []uint64{0xf000e987_f000ff53})
	if !rt[0xfe987] || !rt[0xfff53] {
		t.Errorf("real-mode targets %v", rt)
	}
	if _, err := parseRegisters("no vcpus here"); err == nil {
		t.Error("output without a vCPU accepted")
	}
}

// Before the firmware ran: real mode, 32-bit register names, CRLF lines.
const sampleRealMode = "\r\nCPU#0\r\nEAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1\r\nEIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0\r\nCS =f000 ffff0000 0000ffff 00009b00\r\nIDT=     00000000 0000ffff\r\nCR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000\r\n"

func TestRealModeRegisters(t *testing.T) {
	cpus, err := parseRegisters(sampleRealMode)
	if err != nil {
		t.Fatal(err)
	}
	if v := cpus[0]; v.pe || v.mode != "CS16" || v.pc != 0xffff0000+0xfff0 || v.idtLimit != 0xffff {
		t.Fatalf("parsed %+v", v)
	}
}
