package durations

import (
	"testing"
	"time"
)

func TestQuantile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = 100 - i // 100, 99, ..., 1: unsorted on purpose
	}
	for _, tc := range []struct {
		ds   []time.Duration
		q    float64
		want int // ms
	}{
		{nil, 0.5, 0},
		{ms(7), 0, 7},
		{ms(7), 0.99, 7},
		{ms(3, 1, 2), 0.5, 2},
		{ms(4, 1, 3, 2), 0.5, 2}, // nearest rank: a measurement, not 2.5
		{ms(4, 1, 3, 2), 0.51, 3},
		{ms(4, 1, 3, 2), 1, 4},
		{ms(4, 1, 3, 2), 0, 1},
		{ms(hundred...), 0.99, 99},
		{ms(hundred...), 0.995, 100},
		{ms(hundred...), 0.01, 1},
	} {
		if got := Quantile(tc.ds, tc.q); got != time.Duration(tc.want)*time.Millisecond {
			t.Errorf("Quantile(%v, %v) = %v, want %dms", tc.ds, tc.q, got, tc.want)
		}
	}
}

func TestQuantileLeavesInputAlone(t *testing.T) {
	ds := []time.Duration{3, 1, 2}
	if Median(ds) != 2 {
		t.Fatalf("median of %v: %v", ds, Median(ds))
	}
	if ds[0] != 3 || ds[1] != 1 || ds[2] != 2 {
		t.Errorf("Quantile reordered its input: %v", ds)
	}
}

func TestQuantileOutOfRangePanics(t *testing.T) {
	for _, q := range []float64{-0.1, 1.5, 50} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Quantile(_, %v) did not panic: a percent passed as a fraction would go unnoticed", q)
				}
			}()
			Quantile([]time.Duration{1}, q)
		}()
	}
}
