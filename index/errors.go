package index

import (
	"errors"
	"fmt"
	"github.com/ckptfs/ckptfs/index/rawfmt"
	"github.com/ckptfs/ckptfs/index/runfmt"
	"strings"

	"github.com/cockroachdb/pebble/v2"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	ErrNoStore           = errors.New("index: no store")
	ErrStoreBusy         = errors.New("index: store is in use by another process")
	ErrRunNotFound       = errors.New("index: run not found")
	ErrRunExists         = errors.New("index: run exists")
	ErrBadRunName        = runfmt.ErrBadRunName
	ErrCheckpointMissing = errors.New("index: checkpoint not committed")
	ErrNoWorkingSet      = errors.New("index: working set not recorded")
	ErrNoDeviceState     = errors.New("index: device state not recorded")
	ErrBadInput          = rawfmt.ErrBadInput
	// ErrCorrupt marks stored data that failed a check. Test with IsCorruption.
	ErrCorrupt = errors.New("index: corrupt store")
	// ErrRunRemoved is what reads of a checkpoint handle return once its run
	// was removed (DeleteRun) while the handle was open. A removed run is
	// not a damaged store: errors.Is(err, ErrRunNotFound) holds too, and
	// IsCorruption does not.
	ErrRunRemoved error = runRemoved{}
)

type runRemoved struct{}

func (runRemoved) Error() string        { return "index: run removed" }
func (runRemoved) Is(target error) bool { return target == ErrRunNotFound }

// IsCorruption reports whether err means stored data failed a checksum or a
// structural check, in ckptfs's own records or in Pebble's files.
func IsCorruption(err error) bool {
	return errors.Is(err, ErrCorrupt) || pebble.IsCorruptionError(err)
}

func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// wrapRead marks Pebble corruption errors with ErrCorrupt so that one check
// covers both layers.
func wrapRead(err error, what string) error {
	if err == nil {
		return nil
	}
	if pebble.IsCorruptionError(err) && !errors.Is(err, ErrCorrupt) {
		return fmt.Errorf("%w: reading %s: %s", ErrCorrupt, what, firstLine(err))
	}
	return fmt.Errorf("reading %s: %w", what, err)
}

// firstLine returns the first line of err's message: Pebble's errors carry
// multi-line details that do not belong in a one-line report.
func firstLine(err error) string {
	msg := err.Error()
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		return msg[:i]
	}
	return msg
}
