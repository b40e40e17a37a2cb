package kvmrec

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// A stop request reaches a vCPU between two instructions, and QEMU delivers
// an interrupt that is pending at that moment before it stops: the
// checkpoint is then taken after the delivery (the handler's frame pushed,
// RIP on the handler's entry), at the same instruction count as before it.
// A replay stopped at that count stands before the delivery, so the two
// differ in the frames the delivery wrote, though both executed the same
// instructions. A deterministic recording therefore refuses to checkpoint
// on a handler's entry: it lets the VM run on for a moment and stops again.
// The check reads the IDT through QEMU's monitor, which maps that frame and
// its page-table frames in the VMM: they count as touched (a few frames).

// irqRetries bounds the stops at one boundary; irqRetryRun is how long the
// VM runs between two of them.
const (
	irqRetries  = 20
	irqRetryRun = time.Millisecond
)

var (
	reRIP = regexp.MustCompile(`[RE]IP=([0-9a-f]+)`)
	reCS  = regexp.MustCompile(`(?m)^CS =[0-9a-f]+ ([0-9a-f]+) [0-9a-f]+ [0-9a-f]+(?: DPL=\d (CS64|CS32|CS16))?`)
	reCR0 = regexp.MustCompile(`CR0=([0-9a-f]+)`)
	reIDT = regexp.MustCompile(`IDT=\s*([0-9a-f]+) ([0-9a-f]+)`)
)

// vcpuState is what the boundary check needs of one vCPU.
type vcpuState struct {
	pc       uint64 // linear address of the next instruction
	mode     string // "CS64", "CS32", "CS16"
	pe       bool   // protected mode
	idtBase  uint64
	idtLimit uint64
}

// parseRegisters reads `info registers -a`.
func parseRegisters(out string) ([]vcpuState, error) {
	var cpus []vcpuState
	for _, block := range strings.Split(out, "CPU#")[1:] {
		rip, cs, cr0, idt := reRIP.FindStringSubmatch(block), reCS.FindStringSubmatch(block),
			reCR0.FindStringSubmatch(block), reIDT.FindStringSubmatch(block)
		if rip == nil || cs == nil || cr0 == nil || idt == nil {
			return nil, errors.New("unexpected `info registers` output")
		}
		var v vcpuState
		pc, _ := strconv.ParseUint(rip[1], 16, 64)
		csBase, _ := strconv.ParseUint(cs[1], 16, 64)
		c0, _ := strconv.ParseUint(cr0[1], 16, 64)
		v.idtBase, _ = strconv.ParseUint(idt[1], 16, 64)
		v.idtLimit, _ = strconv.ParseUint(idt[2], 16, 64)
		v.mode, v.pe = cs[2], c0&1 != 0
		if v.mode == "" {
			v.mode = "CS16" // real mode shows no descriptor flags
		}
		if v.mode == "CS64" {
			v.pc = pc
		} else {
			v.pc = csBase + pc&0xffffffff
			if !v.pe {
				v.pc = csBase + pc&0xffff
			}
		}
		cpus = append(cpus, v)
	}
	if len(cpus) == 0 {
		return nil, errors.New("`info registers` named no vCPU")
	}
	return cpus, nil
}

// parseQwords reads the output of the monitor's `x /Ngx ADDR`.
func parseQwords(out string) ([]uint64, error) {
	var q []uint64
	for _, line := range strings.Split(out, "\n") {
		_, vals, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		for _, f := range strings.Fields(vals) {
			v, err := strconv.ParseUint(strings.TrimPrefix(f, "0x"), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("unexpected memory dump %q", line)
			}
			q = append(q, v)
		}
	}
	return q, nil
}

// gateTargets are the linear entry addresses of the interrupt and exception
// handlers that the table at v's IDT names (the real-mode vector table when
// protection is off; flat code segments assumed in 32-bit mode).
func gateTargets(v vcpuState, table []uint64) map[uint64]bool {
	t := make(map[uint64]bool)
	switch {
	case v.mode == "CS64":
		for g := 0; g+1 < len(table); g += 2 {
			lo, hi := table[g], table[g+1]
			t[lo&0xffff|(lo>>48&0xffff)<<16|(hi&0xffffffff)<<32] = true
		}
	case v.pe:
		for _, d := range table {
			t[d&0xffff|(d>>48&0xffff)<<16] = true
		}
	default:
		for _, q := range table {
			for _, d := range []uint64{q & 0xffffffff, q >> 32} {
				t[(d>>16)<<4+d&0xffff] = true
			}
		}
	}
	return t
}

// hmp runs a human monitor command.
func (r *recorder) hmp(ctx context.Context, cmd string) (string, error) {
	var out string
	err := r.qmp.Execute(ctx, "human-monitor-command", map[string]any{"command-line": cmd}, &out)
	return out, err
}

// atHandlerEntry reports whether a vCPU of the stopped VM stands on the
// first instruction of an interrupt or exception handler.
func (r *recorder) atHandlerEntry(ctx context.Context) (bool, string, error) {
	regs, err := r.hmp(ctx, "info registers -a")
	if err != nil {
		return false, "", err
	}
	cpus, err := parseRegisters(regs)
	if err != nil {
		return false, regs, err
	}
	tables := map[[2]uint64]map[uint64]bool{}
	for _, v := range cpus {
		key := [2]uint64{v.idtBase, v.idtLimit}
		targets, ok := tables[key]
		if !ok {
			// 256 vectors: 16-byte gates in long mode, 8-byte ones in
			// protected mode, 4-byte segment:offset pairs in real mode.
			n := min((v.idtLimit+1)/8, 512)
			if v.mode != "CS64" {
				n = min(n, 256)
				if !v.pe {
					n = min(n, 128)
				}
			}
			if n == 0 {
				continue
			}
			dump, err := r.hmp(ctx, fmt.Sprintf("x /%dgx 0x%x", n, v.idtBase))
			if err != nil {
				return false, regs, err
			}
			table, err := parseQwords(dump)
			if err != nil {
				return false, regs, err
			}
			targets = gateTargets(v, table)
			tables[key] = targets
		}
		if targets[v.pc] {
			return true, regs, nil
		}
	}
	return false, regs, nil
}

// settleBoundary makes sure the stopped VM is not on a handler's entry,
// running it on for a moment and stopping it again until it is not. It
// returns `info registers -a` of the VM as it stays stopped.
func (r *recorder) settleBoundary(ctx context.Context, i int) (retries int, regs string, err error) {
	for retries = 0; ; retries++ {
		at, regs, err := r.atHandlerEntry(ctx)
		if err != nil {
			return retries, "", fmt.Errorf("checking the vCPUs at checkpoint %d: %w", i, err)
		}
		if !at {
			return retries, regs, nil
		}
		if retries == irqRetries {
			r.cfg.Logger.Warn("a vCPU stays on an interrupt handler's entry; the replay of the interval before will differ in the frames the delivery wrote",
				"run", r.cfg.Run, "checkpoint", i)
			return retries, regs, nil
		}
		if err := r.qmp.Execute(ctx, "cont", nil, nil); err != nil {
			return retries, "", err
		}
		time.Sleep(irqRetryRun)
		if err := r.qmp.Execute(ctx, "stop", nil, nil); err != nil {
			return retries, "", err
		}
	}
}
