package durations

import (
	"fmt"
	"slices"
	"time"

	"gonum.org/v1/gonum/stat"
)

// Quantile returns the q-quantile (nearest rank) of ds, in any order; 0
// for no durations. ds is not modified. q outside [0, 1] is a programming
// error and panics.
func Quantile(ds []time.Duration, q float64) time.Duration {
	if q < 0 || q > 1 {
		panic(fmt.Sprintf("durations: quantile %v outside [0, 1]", q))
	}
	if len(ds) == 0 {
		return 0
	}
	x := make([]float64, len(ds))
	for i, d := range ds {
		x[i] = float64(d)
	}
	slices.Sort(x)
	return time.Duration(stat.Quantile(q, stat.Empirical, x, nil))
}

// Median is Quantile(ds, 0.5).
func Median(ds []time.Duration) time.Duration { return Quantile(ds, 0.5) }
