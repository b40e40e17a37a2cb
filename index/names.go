package index

import "github.com/ckptfs/ckptfs/index/runfmt"

// The records of runs are defined in runfmt, which readers of a mount's
// files use without linking the store; index knows them by these names.
type (
	RunID           = runfmt.RunID
	RunRecord       = runfmt.RunRecord
	RunInfo         = runfmt.RunInfo
	CheckpointStats = runfmt.CheckpointStats
	IntervalStats   = runfmt.IntervalStats
)

// ValidRunName reports whether name is a valid run name (DESIGN.md: Words).
func ValidRunName(name string) error { return runfmt.ValidRunName(name) }
