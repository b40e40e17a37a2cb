// Package runfmt defines the JSON records of runs that the store keeps and
// users see: a run's record (stored, and run.json in the mount), the commit
// record of a checkpoint and the statistics of an interval (<i>.json), and
// the rule for run names. Each is defined here once. It imports nothing of
// Pebble, so that programs that only read a mount's files (replay) do not
// link the store; package index uses these types under the same names.
//
// The JSON field names are part of the on-disk format and of what users
// read: never rename them.
package runfmt
