// Package testenv decides, once for every package's tests, whether this
// machine has what a test needs: a usable FUSE, QEMU, root.
//
// Where it lacks it the test is skipped with the reason, so the tests run
// on a laptop; where CKPTFS_REQUIRE_FUSE=1 or CKPTFS_REQUIRE_QEMU=1 says
// the machine must have it (CI sets both, and runs as root), the test fails
// instead: a test never passes by silently skipping where it matters.
//
// Only tests import it.
package testenv
