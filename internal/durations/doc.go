// Package durations summarises measured durations (checkpoint downtimes,
// read latencies) with one definition of a quantile for the whole project:
// nearest rank, the smallest measurement that at least the fraction q of
// the measurements do not exceed (gonum's stat.Empirical). A quantile is
// always one of the measurements, never an interpolation between two.
//
// Quantiles are fractions in [0, 1]: 0.5 is the median, 0.99 the 99th
// percentile.
package durations
