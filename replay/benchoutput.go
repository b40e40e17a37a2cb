package replay

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Table writes the report as a terminal table: a header with the run and
// its working sets, one row per mode and concurrency, and the notes.
func (r *BenchReport) Table(w io.Writer) error {
	var dirty uint64
	var nDirty int
	for _, iv := range r.Intervals {
		if iv.HasStats {
			dirty += iv.DirtyFrames
			nDirty++
		}
	}
	fmt.Fprintf(w, "replay bench: run %s in %s: %d intervals, RAM %s, page %d B\n",
		r.Run, r.Mount, len(r.Intervals), fmtBytes(r.RAMSize), r.PageSize)
	fmt.Fprintf(w, "working set: mean %s (%.1f %% of RAM)", fmtBytes(r.MeanWSBytes), 100*r.WSFraction)
	if nDirty > 0 {
		fmt.Fprintf(w, ", dirty mean %s", fmtBytes(dirty*uint64(r.PageSize)/uint64(nDirty)))
	}
	fmt.Fprintf(w, "; caches: %s\n\n", r.Cache)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tK\treplays\tload/replay\tfootprint/replay\ttotal footprint\tpage cache/replay\tmaj.faults\tload −\tfootprint −\t")
	for _, x := range r.Results {
		name := fmt.Sprintf("(%s) %s", x.Mode.Letter(), x.Mode.Describe())
		if x.Skipped != "" {
			fmt.Fprintf(tw, "%s\t%d\t–\t–\t–\t–\t–\t–\t–\t–\t\n", name, x.Concurrency)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%s\t%s\t%s\t%.0f\t%s\t%s\t\n",
			name, x.Concurrency, x.Replays, fmtDur(x.LoadMean), fmtBytes(x.FootprintMean),
			fmtBytes(x.TotalFootprint), fmtBytes(x.CacheMean), x.MajFltMean,
			fmtPct(x.LoadReduction), fmtPct(x.FootprintReduction))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w, "\nfootprint: (a)/(b) the private copy in anonymous memory; (c)/(d) the page cache of the mapped file.")
	fmt.Fprintln(w, "total footprint: all K replays of a batch together (one page cache per file). load −, footprint −: reduction against (a) at the same K.")
	if f := r.Floor; f != nil {
		fmt.Fprintf(w, "floor: filling fresh memory of W_i's size takes %s (of the whole RAM %s, %.0f %% of (a)); no loader of W_i beats a %.1f %% load reduction here.\n",
			fmtDur(f.WS), fmtDur(f.RAM), 100*f.RAMShare, 100*f.BestLoadReduction)
	}
	if len(r.Notes) > 0 {
		fmt.Fprintln(w, "notes:")
		for _, n := range r.Notes {
			fmt.Fprintf(w, "  - %s\n", n)
		}
	}
	return nil
}

// WriteJSON writes the report as indented JSON.
func (r *BenchReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// String returns the table.
func (r *BenchReport) String() string {
	var b strings.Builder
	_ = r.Table(&b)
	return b.String()
}

func fmtBytes(n uint64) string {
	const k = 1024
	switch {
	case n >= k*k*k:
		return fmt.Sprintf("%.2f GiB", float64(n)/(k*k*k))
	case n >= k*k:
		return fmt.Sprintf("%.1f MiB", float64(n)/(k*k))
	case n >= k:
		return fmt.Sprintf("%.0f KiB", float64(n)/k)
	}
	return fmt.Sprintf("%d B", n)
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func fmtPct(p *float64) string {
	if p == nil {
		return "–"
	}
	return fmt.Sprintf("%.1f %%", 100**p)
}

// WritePlot draws the report into path, as PNG or SVG by its extension
// (.png, .svg; .pdf and .eps work too): working-set size and dirty frames
// per interval, and per mode the footprint and the load time per replay at
// each concurrency.
func (r *BenchReport) WritePlot(path string) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	switch format {
	case "png", "svg", "pdf", "eps", "jpg", "jpeg", "tif", "tiff":
	default:
		return fmt.Errorf("%w: plot %s: want a .png or .svg file", ErrBadConfig, path)
	}
	plots, err := r.plots()
	if err != nil {
		return err
	}
	c, err := draw.NewFormattedCanvas(18*vg.Centimeter, vg.Length(len(plots))*8*vg.Centimeter, format)
	if err != nil {
		return err
	}
	rows := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadY: vg.Centimeter, PadTop: 2 * vg.Millimeter,
		PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 4 * vg.Millimeter}
	canvases := plot.Align(rows, tiles, draw.New(c))
	for i, p := range plots {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func (r *BenchReport) plots() ([]*plot.Plot, error) {
	mib := float64(1 << 20)
	ps := float64(r.PageSize)

	ws := plot.New()
	ws.Title.Text = fmt.Sprintf("run %s: working set and dirty frames per interval (RAM %s)", r.Run, fmtBytes(r.RAMSize))
	ws.X.Label.Text = "interval"
	ws.Y.Label.Text = "MiB"
	var wsXY, dXY plotter.XYs
	hasDirty := false
	for _, iv := range r.Intervals {
		wsXY = append(wsXY, plotter.XY{X: float64(iv.Interval), Y: float64(iv.WSFrames) * ps / mib})
		dXY = append(dXY, plotter.XY{X: float64(iv.Interval), Y: float64(iv.DirtyFrames) * ps / mib})
		hasDirty = hasDirty || iv.HasStats
	}
	args := []any{"working set |W_i|", wsXY}
	if hasDirty {
		args = append(args, "dirty |D_i|", dXY)
	}
	if err := plotutil.AddLinePoints(ws, args...); err != nil {
		return nil, err
	}
	ws.Y.Min = 0
	for _, xy := range wsXY {
		ws.Y.Max = max(ws.Y.Max, xy.Y*1.35) // room for the legend
	}
	ws.Legend.Top = true

	var modes []Mode
	var ks []int
	for _, x := range r.Results {
		if !containsMode(modes, x.Mode) {
			modes = append(modes, x.Mode)
		}
		found := false
		for _, k := range ks {
			found = found || k == x.Concurrency
		}
		if !found {
			ks = append(ks, x.Concurrency)
		}
	}
	names := make([]string, len(modes))
	for i, m := range modes {
		names[i] = fmt.Sprintf("(%s) %s", m.Letter(), m.Describe())
	}
	bars := func(title, ylabel string, val func(ModeResult) float64) (*plot.Plot, error) {
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = ylabel
		p.NominalX(names...)
		w := vg.Points(float64(60) / float64(len(ks)))
		top := 0.0
		for ki, k := range ks {
			vals := make(plotter.Values, len(modes))
			for mi, m := range modes {
				if x, ok := r.Result(m, k); ok && x.Skipped == "" {
					vals[mi] = val(x)
					top = max(top, vals[mi])
				}
			}
			b, err := plotter.NewBarChart(vals, w)
			if err != nil {
				return nil, err
			}
			b.LineStyle.Width = 0
			b.Color = plotutil.Color(ki)
			b.Offset = w * vg.Length(float64(ki)-float64(len(ks)-1)/2)
			p.Add(b)
			p.Legend.Add(fmt.Sprintf("K=%d", k), b)
		}
		p.Legend.Top = true
		p.Y.Min = 0
		p.Y.Max = top * 1.35 // room for the legend
		p.Add(plotter.NewGrid())
		return p, nil
	}
	fp, err := bars("memory footprint per replay", "MiB", func(x ModeResult) float64 {
		return float64(x.FootprintMean) / mib
	})
	if err != nil {
		return nil, err
	}
	lt, err := bars("load time per replay", "ms", func(x ModeResult) float64 {
		return float64(x.LoadMean) / float64(time.Millisecond)
	})
	if err != nil {
		return nil, err
	}
	return []*plot.Plot{ws, fp, lt}, nil
}
