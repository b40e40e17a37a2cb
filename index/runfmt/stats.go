package runfmt

import "time"

// CheckpointStats is the commit record of checkpoint i (stored as its
// JSON, and the "checkpoint" object of <i>.json).
type CheckpointStats struct {
	Checkpoint int `json:"checkpoint"`
	// ChangedFrames is the number of frame versions of this checkpoint:
	// |D(i-1)|, or the non-zero frames for checkpoint 0.
	ChangedFrames uint64 `json:"changed_frames"`
	// NewFrames were stored as new content; DedupFrames pointed at content
	// stored before; ZeroFrames became all zeros (nothing stored).
	NewFrames   uint64 `json:"new_frames"`
	DedupFrames uint64 `json:"dedup_frames"`
	ZeroFrames  uint64 `json:"zero_frames"`
	// BytesStored is the uncompressed size of what this checkpoint added.
	BytesStored      uint64    `json:"bytes_stored"`
	DeviceStateBytes uint64    `json:"device_state_bytes"`
	WorkingSetFrames uint64    `json:"prev_ws_frames"`
	DowntimeNS       int64     `json:"downtime_ns"`
	CommittedAt      time.Time `json:"committed_at"`
	// ICount is the guest instruction count at this checkpoint, in a
	// deterministic run.
	ICount *uint64 `json:"icount,omitempty"`
}

// IntervalStats describes interval i: what it touched and changed. It is
// <i>.json in the mount, beside the mount's own fields.
type IntervalStats struct {
	Interval         int    `json:"interval"`
	WorkingSetFrames uint64 `json:"ws_frames"`
	DirtyFrames      uint64 `json:"dirty_frames"` // |D_i| = versions of checkpoint i+1
	NewFrames        uint64 `json:"new_frames"`   // content first stored at checkpoint i+1
	BytesStored      uint64 `json:"bytes_stored"` // what checkpoint i+1 added
	DowntimeNS       int64  `json:"downtime_ns"`  // pause that ended interval i
	DeviceStateBytes uint64 `json:"device_state_bytes"`
	// Packed tells whether W_i has a working-set pack.
	Packed bool `json:"ws_packed"`
	// ICount is the guest instruction count at checkpoint i (the start of
	// the interval), in a deterministic run; the interval ends at
	// checkpoint i+1's.
	ICount *uint64 `json:"icount,omitempty"`
	// Checkpoint i itself (the start of the interval).
	Checkpoint CheckpointStats `json:"checkpoint"`
}
