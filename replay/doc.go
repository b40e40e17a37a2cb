// Package replay restores checkpoints of a ckptfs mount into a VMM and
// measures what sparse checkpoints buy.
package replay
