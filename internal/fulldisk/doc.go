// Package fulldisk gives tests a small file system that fills up: a tmpfs
// of a given size, mounted for one test and unmounted after it, so that
// tests of what ckptfs does on a full disk (one error line, committed
// checkpoints intact, nothing hangs) share one way to make one. Only tests
// import it.
package fulldisk
