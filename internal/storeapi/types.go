package storeapi

import (
	"encoding/json"
	"time"

	"github.com/ckptfs/ckptfs/index"
)

// Version is the API version, the first element of every path (/v1/...).
// Fields may be added within a version; anything a v1 client relies on
// changing makes /v2.
const Version = "v1"

// Content types of the streamed bodies.
const (
	// ContentEvents is a response of Events, one JSON object a line; the
	// last is a Result or an Error.
	ContentEvents = "application/x-ndjson"
	// ContentImport is an import's request body (importfmt.go).
	ContentImport = "application/x-ckptfs-import"
	// ContentExtents is an export's response body (extents.go).
	ContentExtents = "application/x-ckptfs-extents"
)

// Event is one line of a streamed response (import, verify, pack, record).
// Exactly one field is set; a stream ends with Result or Error, and a
// stream that ends otherwise was cut off.
type Event struct {
	Progress   *Progress         `json:"progress,omitempty"`
	Log        *LogRecord        `json:"log,omitempty"`
	Checkpoint *CheckpointRecord `json:"checkpoint,omitempty"`
	Recorded   *RecordSummary    `json:"recorded,omitempty"`
	Result     json.RawMessage   `json:"result,omitempty"`
	Error      *Error            `json:"error,omitempty"`
}

// Progress counts bytes done of bytes in all.
type Progress struct {
	Done  uint64 `json:"done"`
	Total uint64 `json:"total"`
}

// LogRecord is a message the owner logged for the client's user while it
// served the request (a recording's warnings).
type LogRecord struct {
	Time    time.Time         `json:"time"`
	Level   string            `json:"level"` // DEBUG, INFO, WARN, ERROR
	Message string            `json:"message"`
	Attrs   map[string]string `json:"attrs,omitempty"`
}

// Status answers GET /v1/status: who owns the store.
type Status struct {
	Version    string `json:"version"`
	PID        int    `json:"pid"`
	Owner      string `json:"owner"`           // what the owner is doing, e.g. "ckptfs mount /mnt (pid 42)"
	Store      string `json:"store"`           // the store directory
	Mount      string `json:"mount,omitempty"` // where the owner mounts the store, if it does
	Generation uint64 `json:"generation"`
}

// ImportHeader is the first line of an import body: the size of every
// dump, their number, and W_i for i < Dumps-1 in list format (or none).
type ImportHeader struct {
	RAMSize     uint64   `json:"ram_size"`
	Dumps       int      `json:"dumps"`
	WorkingSets []string `json:"working_sets,omitempty"`
}

// RecordRequest is POST /v1/runs/{run}/record: the owner records a VM that
// runs on its machine, so the paths are the owner's and absolute.
type RecordRequest struct {
	QMP         string `json:"qmp,omitempty"` // QEMU's QMP socket (not deterministic)
	Mem         string `json:"mem,omitempty"` // QEMU's RAM file (not deterministic)
	IntervalNS  int64  `json:"interval_ns"`
	Count       int    `json:"count,omitempty"`
	DurationNS  int64  `json:"duration_ns,omitempty"`
	Tracker     string `json:"tracker,omitempty"` // pagemap (default) or hash
	DeviceState bool   `json:"device_state,omitempty"`
	ExactWS     bool   `json:"exact_ws,omitempty"`
	NoPrecopy   bool   `json:"no_precopy,omitempty"`
	NoPack      bool   `json:"no_pack,omitempty"`
	PackLive    bool   `json:"pack_live,omitempty"`
	// Deterministic starts QEMU (binary QEMU, plugin WSPlugin) with
	// MachineArgs in record mode.
	Deterministic bool     `json:"deterministic,omitempty"`
	QEMU          string   `json:"qemu,omitempty"`
	WSPlugin      string   `json:"ws_plugin,omitempty"`
	MachineArgs   []string `json:"machine_args,omitempty"`
	// LogLevel is the lowest level of LogRecords sent back (default INFO).
	LogLevel string `json:"log_level,omitempty"`
}

// CheckpointRecord is a recording's event for each committed checkpoint.
type CheckpointRecord struct {
	Checkpoint    int    `json:"checkpoint"`
	ChangedFrames uint64 `json:"changed_frames"`
	DowntimeNS    int64  `json:"downtime_ns"`
	VMDowntimeNS  int64  `json:"vm_downtime_ns,omitempty"`
	PrecopyNS     int64  `json:"precopy_ns,omitempty"`
}

// RecordSummary is a recording's event when the recording ends (also when it
// failed after it committed checkpoints); packing follows, and the stream's
// Result is a PackResult.
type RecordSummary struct {
	Run              string `json:"run"`
	RAMSize          uint64 `json:"ram_size"`
	Checkpoints      int    `json:"checkpoints"`
	Stopped          string `json:"stopped"` // count, duration, canceled, error
	ElapsedNS        int64  `json:"elapsed_ns"`
	MedianDowntimeNS int64  `json:"median_downtime_ns"`
	P99DowntimeNS    int64  `json:"p99_downtime_ns"`
	BytesStored      uint64 `json:"bytes_stored"`
}

// PackResult is the result of POST /v1/runs/{run}/pack and of a recording:
// the packs built and how long that took.
type PackResult struct {
	index.PackStats
	Seconds float64 `json:"seconds"`
}
