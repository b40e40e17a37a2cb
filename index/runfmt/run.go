package runfmt

import (
	"errors"
	"fmt"
	"regexp"
	"time"
)

// RunID is the store-internal number of a run. IDs are never reused.
type RunID uint32

// RunRecord is what is recorded about a run when it is created: the
// store's run record (the 'm' value) holds exactly its JSON.
type RunRecord struct {
	Name     string            `json:"name"`
	RAMSize  uint64            `json:"ram_size"`
	PageSize uint32            `json:"page_size"`
	Recorder string            `json:"recorder"`
	Tracker  string            `json:"tracker"`
	Created  time.Time         `json:"created"`
	Meta     map[string]string `json:"meta,omitempty"`
	// Deterministic runs were recorded with QEMU in record mode; they have a
	// replay log and instruction counts.
	Deterministic bool `json:"deterministic,omitempty"`
	// QEMUArgs is the QEMU command line of the recording. Runs recorded
	// before it was a field of its own have it from Meta["qemu_args"] (a
	// JSON list).
	QEMUArgs []string `json:"qemu_args,omitempty"`
}

// RunInfo describes a run: its record and what the store holds of it now.
// Its JSON, without "id", is the mount's run.json.
type RunInfo struct {
	RunRecord
	ID     RunID  `json:"id"`
	Frames uint64 `json:"frames"`
	// Checkpoints is the number of committed checkpoints (0..Checkpoints-1).
	Checkpoints int `json:"checkpoints"`
	// Intervals is the number of intervals whose working set is known; for
	// them <i>.ram exists in the mount.
	Intervals int `json:"intervals"`
}

// ErrBadRunName marks a run name that breaks the rule of ValidRunName.
var ErrBadRunName = errors.New("index: bad run name")

var runNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidRunName reports whether name is a valid run name (DESIGN.md: Words).
func ValidRunName(name string) error {
	if !runNameRE.MatchString(name) {
		return fmt.Errorf("%w %q: want 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit", ErrBadRunName, name)
	}
	return nil
}
