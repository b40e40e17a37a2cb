package replay

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Table writes the report of one interval, one field a line.
func (r *IntervalReport) Table(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "run\t%s\n", r.Run)
	fmt.Fprintf(tw, "interval\t%d (from %s)\n", r.Interval, r.sourceFile())
	fmt.Fprintf(tw, "verdict\t%s\n", r.Verdict)
	fmt.Fprintf(tw, "instructions\t%d (icount %d to %d)\n", r.Instructions, r.StartICount, r.TargetICount)
	if r.ReachedICount > 0 || r.Verdict == VerdictVerified {
		fmt.Fprintf(tw, "reached icount\t%d\n", r.ReachedICount)
	}
	fmt.Fprintf(tw, "load\t%s (exec to device state loaded)\n", fmtDur(r.LoadTime))
	until := "stop"
	if r.ReachedICount == 0 && r.Verdict != VerdictVerified {
		until = "end"
	}
	fmt.Fprintf(tw, "replay\t%s (cont to %s)\n", fmtDur(r.ReplayTime), until)
	fmt.Fprintf(tw, "verify\t%s\n", fmtDur(r.VerifyTime))
	fmt.Fprintf(tw, "frames verified\t%d\n", r.FramesVerified)
	diff := fmt.Sprint(r.DifferingFrames)
	if r.FirstDifferingPFN != nil {
		diff += fmt.Sprintf(" (first pfn %#x)", *r.FirstDifferingPFN)
	}
	fmt.Fprintf(tw, "differing frames\t%s\n", diff)
	misses := fmt.Sprintf("%d (%d frames)", r.Misses, r.MissFrames)
	if !r.CountersKnown {
		misses = "unknown (no mount counters in <I>.json)"
	}
	if r.VerifyHoleReads > 0 {
		misses += fmt.Sprintf("; %d holes read by the verification after the stop", r.VerifyHoleReads)
	}
	fmt.Fprintf(tw, "misses\t%s\n", misses)
	if t := r.Touched; t != nil {
		fmt.Fprintf(tw, "precision\t≥ %.1f %% (%d of the %d frames of W_%d touched; QEMU's page-table walks are not seen)\n",
			100*t.Precision, t.InWS, t.WSFrames, r.Interval)
		outside := fmt.Sprint(t.OutsideWS)
		if len(t.FirstOutside) > 0 {
			outside += " (first pfns " + fmtPFNs(t.FirstOutside) + ")"
		}
		fmt.Fprintf(tw, "touched outside W\t%s\n", outside)
	}
	fmt.Fprintf(tw, "peak RSS\t%s\n", fmtBytes(r.PeakRSS))
	fmt.Fprintf(tw, "deadline\t%s\n", r.Deadline)
	fmt.Fprintf(tw, "total\t%s\n", fmtDur(r.Total))
	if r.Error != "" {
		fmt.Fprintf(tw, "error\t%s\n", r.Error)
	}
	return tw.Flush()
}

func (r *IntervalReport) sourceFile() string {
	if r.Source == "full" {
		return fmt.Sprintf("full/%d.ram", r.Interval)
	}
	return fmt.Sprintf("%d.ram", r.Interval)
}

// Table writes the report of a run: a table per pass, one row per
// interval, then the totals.
func (r *RunReport) Table(w io.Writer) error {
	for _, p := range []*PassReport{&r.Sparse, r.Full} {
		if p == nil {
			continue
		}
		file := "<I>.ram"
		if p.Source == "full" {
			file = "full/<I>.ram, loaded whole (prealloc=on)"
		}
		if r.Slurm != nil {
			fmt.Fprintf(w, "replay run %s from %s, Slurm job %s, %d tasks at a time:\n", r.Run, file, r.Slurm.JobID, r.Jobs)
		} else {
			fmt.Fprintf(w, "replay run %s from %s, %d at a time:\n", r.Run, file, r.Jobs)
		}
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		touch := false
		for _, iv := range p.Intervals {
			touch = touch || iv.Touched != nil
		}
		head := "interval\tinstructions\tload ms\treplay ms\tframes\tdiffer\tmisses\t"
		if touch {
			head += "precision ≥\toutside W\t"
		}
		fmt.Fprintln(tw, head+"peak RSS\tverdict\t")
		for _, iv := range p.Intervals {
			fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%d\t%d\t%d\t", iv.Interval, iv.Instructions, ms(iv.LoadTime), ms(iv.ReplayTime),
				iv.FramesVerified, iv.DifferingFrames, iv.Misses)
			if touch {
				if t := iv.Touched; t != nil {
					fmt.Fprintf(tw, "%.1f %%\t%d\t", 100*t.Precision, t.OutsideWS)
				} else {
					fmt.Fprint(tw, "-\t-\t")
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t\n", fmtBytes(iv.PeakRSS), iv.Verdict)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintf(w, "  %d of %d verified; %d instructions; wall %s, replay times sum %s (%.2f× the wall), load mean %s\n",
			p.Verified, len(p.Intervals), p.Instructions, fmtDur(p.Wall), fmtDur(p.ReplaySum), p.ReplayPerWall, fmtDur(p.MeanLoad))
		if r.Slurm != nil {
			fmt.Fprintf(w, "  largest replay %s; misses %d (%d frames); reports and task output in %s\n",
				fmtBytes(p.MaxReplayRSS), p.Misses, p.MissFrames, r.Slurm.Dir)
		} else {
			fmt.Fprintf(w, "  peak memory of the replays running together %s, of it guest RAM %s (largest replay %s); misses %d (%d frames)\n",
				fmtBytes(p.PeakRSS), fmtBytes(p.PeakGuestRAM), fmtBytes(p.MaxReplayRSS), p.Misses, p.MissFrames)
		}
		if touch {
			fmt.Fprintf(w, "  precision (frames touched in W_I / |W_I|, a lower bound: page-table walks are not seen) of the %d replays that reached the next checkpoint: min %.1f %%, mean %.1f %%; frames touched outside W_I %d\n",
				p.Touched, 100*p.MinPrecision, 100*p.MeanPrecision, p.TouchedOutside)
		}
		for _, iv := range p.Intervals {
			if iv.Error != "" {
				fmt.Fprintf(w, "  interval %d: %s\n", iv.Interval, iv.Error)
			}
		}
	}
	if r.Full != nil {
		fmt.Fprintf(w, "sparse/full: peak memory %.3f, guest RAM %.3f (W/RAM of the replays running together %.3f, mean %.3f), time to start replaying %.3f\n",
			r.MemoryRatio, r.GuestRAMRatio, r.PeakWSRatio, r.WSRatio, r.LoadRatio)
	}
	verdict := "all verified"
	if !r.AllVerified {
		verdict = "NOT all verified"
	}
	_, err := fmt.Fprintln(w, verdict)
	return err
}

// fmtPFNs writes pfns in hex, comma-separated.
func fmtPFNs(pfns []uint64) string {
	s := make([]string, len(pfns))
	for k, p := range pfns {
		s[k] = fmt.Sprintf("%#x", p)
	}
	return strings.Join(s, ",")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f", float64(d)/float64(time.Millisecond)) }
