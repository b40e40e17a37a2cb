// Command benchtable runs the benchmarks of ckptfs (`make bench`) and prints
// their ratios and figures as one short table. Every benchmark measures its
// baseline in the same run; this program only collects what they report.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"text/tabwriter"
)

func main() {
	benchtime := flag.String("benchtime", "1x", "go test -benchtime")
	pkgs := flag.String("pkgs", "./index,./fs,./kvmrec,./test/integration", "comma-separated packages")
	filter := flag.String("bench", ".", "go test -bench pattern")
	flag.Parse()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PACKAGE\tBENCHMARK\tMETRIC\tVALUE")
	failed := false
	for _, pkg := range strings.Split(*pkgs, ",") {
		cmd := exec.Command("go", "test", "-run", "^$", "-bench", *filter, "-benchtime", *benchtime, "-timeout", "60m", pkg)
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		if err := cmd.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(os.Stderr, line) // the raw output, for the record
			f := strings.Fields(line)
			if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
				continue
			}
			name := strings.TrimPrefix(f[0], "Benchmark")
			if i := strings.LastIndexByte(name, '-'); i > 0 {
				name = name[:i]
			}
			// f[1] is N, then value/unit pairs.
			for i := 2; i+1 < len(f); i += 2 {
				if f[i+1] == "ns/op" || f[i+1] == "B/op" || f[i+1] == "allocs/op" {
					continue
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.TrimPrefix(pkg, "./"), name, f[i+1], f[i])
			}
		}
		if err := cmd.Wait(); err != nil {
			fmt.Fprintf(os.Stderr, "benchtable: %s: %v\n", pkg, err)
			failed = true
		}
	}
	fmt.Println()
	tw.Flush()
	if failed {
		os.Exit(1)
	}
}
