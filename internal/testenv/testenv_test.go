package testenv

import (
	"fmt"
	"strings"
	"testing"
)

// outcome stands in for a test: it records a skip or a failure instead of
// stopping the goroutine, so a Require… call can be judged from outside.
type outcome struct {
	testing.TB
	skipped, failed string
}

func (o *outcome) Helper()                   {}
func (o *outcome) Skip(args ...any)          { o.skipped = fmt.Sprint(args...) }
func (o *outcome) Fatalf(f string, a ...any) { o.failed = fmt.Sprintf(f, a...) }

func TestRequireQEMUWithoutQEMU(t *testing.T) {
	t.Setenv("PATH", t.TempDir())

	t.Setenv(requireQEMUVar, "")
	var o outcome
	if path := RequireQEMU(&o); path != "" || o.failed != "" || !strings.Contains(o.skipped, QEMU) {
		t.Errorf("without %s: path %q, skipped %q, failed %q; want a skip naming it", QEMU, path, o.skipped, o.failed)
	}

	t.Setenv(requireQEMUVar, "1")
	o = outcome{}
	RequireQEMU(&o)
	if o.skipped != "" || !strings.Contains(o.failed, requireQEMUVar+"=1") {
		t.Errorf("without %s and %s=1: skipped %q, failed %q; want a failure", QEMU, requireQEMUVar, o.skipped, o.failed)
	}
}

// A "1" is what turns a skip into a failure; any other value skips.
func TestUnavailable(t *testing.T) {
	for _, tc := range []struct {
		value string
		fail  bool
	}{{"", false}, {"0", false}, {"1", true}} {
		t.Setenv(requireFUSEVar, tc.value)
		var o outcome
		unavailable(&o, requireFUSEVar, "needs FUSE: no /dev/fuse")
		if got := o.failed != ""; got != tc.fail || (o.skipped == "") == !tc.fail {
			t.Errorf("%s=%q: skipped %q, failed %q", requireFUSEVar, tc.value, o.skipped, o.failed)
		}
		if !strings.Contains(o.skipped+o.failed, "no /dev/fuse") {
			t.Errorf("%s=%q: the reason is lost: %q%q", requireFUSEVar, tc.value, o.skipped, o.failed)
		}
	}
}
