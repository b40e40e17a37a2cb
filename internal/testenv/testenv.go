package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"testing"
)

// The variables that turn a skip into a failure.
const (
	requireFUSEVar  = "CKPTFS_REQUIRE_FUSE"
	requireQEMUVar  = "CKPTFS_REQUIRE_QEMU"
	requireSlurmVar = "CKPTFS_REQUIRE_SLURM"
)

// QEMU is the emulator the recorder and replay start.
const QEMU = "qemu-system-x86_64"

// RequireFUSE skips t unless this process can mount a FUSE file system:
// /dev/fuse opens read-write, and the process is root or has a fusermount
// helper (go-fuse and fs.CleanupStale take fusermount3, else fusermount).
// It fails t instead when CKPTFS_REQUIRE_FUSE=1.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if err := fuseUsable(); err != nil {
		unavailable(t, requireFUSEVar, "needs FUSE: "+err.Error())
	}
}

func fuseUsable() error {
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	f.Close()
	if os.Geteuid() == 0 {
		return nil
	}
	for _, bin := range []string{"fusermount3", "fusermount"} {
		if _, err := exec.LookPath(bin); err == nil {
			return nil
		}
	}
	return errors.New("not root, and neither fusermount3 nor fusermount is in $PATH")
}

// RequireQEMU skips t unless qemu-system-x86_64 is in $PATH, and returns
// its path. It fails t instead when CKPTFS_REQUIRE_QEMU=1.
func RequireQEMU(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath(QEMU)
	if err != nil {
		unavailable(t, requireQEMUVar, fmt.Sprintf("needs %s (apt-get install qemu-system-x86): %v", QEMU, err))
	}
	return path
}

// RequireSlurm skips t unless Slurm's daemons and commands (slurmctld,
// slurmd, sbatch, squeue, sinfo, scancel) are in $PATH, for tests that start a
// cluster of one node. It fails t instead when CKPTFS_REQUIRE_SLURM=1
// (make test installs Slurm and sets it).
func RequireSlurm(t testing.TB) {
	t.Helper()
	for _, bin := range []string{"slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scancel"} {
		if _, err := exec.LookPath(bin); err != nil {
			unavailable(t, requireSlurmVar, fmt.Sprintf("needs Slurm (apt-get install slurm-wlm): %v", err))
			return
		}
	}
}

// RequireRoot skips t unless the process is root, saying why the test
// needs it. It fails t instead when CKPTFS_REQUIRE_FUSE=1: the machines
// that must mount (CI) run the tests as root, and the tests that need root
// (mounting a tmpfs, acting as another user) must run there.
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, requireFUSEVar, "needs root: "+why)
	}
}

// unavailable fails t when the variable named by env is "1", else skips it.
func unavailable(t testing.TB, env, reason string) {
	t.Helper()
	if os.Getenv(env) == "1" {
		t.Fatalf("%s (%s=1, so this fails rather than skips)", reason, env)
	} else {
		t.Skip(reason)
	}
}
