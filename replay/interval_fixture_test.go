package replay_test

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/replay/replaytest"
)

// TestIntervalFixture replays a deterministic run in QEMU: the run directory
// named by CKPTFS_REPLAY_FIXTURE (MNT/<run> of a mount, or a copy in a plain
// directory). CKPTFS_REPLAY_FIXTURE_SPIN lists intervals known not to
// replay (comma-separated); CKPTFS_REPLAY_FIXTURE_FULL=1 also replays from
// full/<i>.ram. Skipped without CKPTFS_REPLAY_FIXTURE.
func TestIntervalFixture(t *testing.T) {
	dir := os.Getenv("CKPTFS_REPLAY_FIXTURE")
	if dir == "" {
		t.Skip("CKPTFS_REPLAY_FIXTURE is not set (a deterministic run directory)")
	}
	var opt replaytest.IntervalChecks
	for _, f := range strings.Split(os.Getenv("CKPTFS_REPLAY_FIXTURE_SPIN"), ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		i, err := strconv.Atoi(f)
		if err != nil {
			t.Fatalf("CKPTFS_REPLAY_FIXTURE_SPIN: %v", err)
		}
		opt.Spinning = append(opt.Spinning, i)
	}
	opt.Full = os.Getenv("CKPTFS_REPLAY_FIXTURE_FULL") == "1"
	dir = filepath.Clean(dir)
	replaytest.CheckIntervals(t, filepath.Dir(dir), filepath.Base(dir), opt)
}
