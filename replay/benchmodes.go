package replay

import (
	"fmt"
	"strings"
)

// Mode is one way of loading a checkpoint.
type Mode string

// The four loaders Bench compares, (a)-(d) in reports (doc.go, "The bench").
const (
	ModeFull           Mode = "full"            // (a) read all of full/<i>.ram into anonymous memory
	ModeSparse         Mode = "sparse"          // (b) read only W_i of <i>.ram into anonymous memory
	ModeLazy           Mode = "lazy"            // (c) mmap <i>.ram, touch W_i; the mount prefetches W_i on open
	ModeLazyNoPrefetch Mode = "lazy-noprefetch" // (d) as (c) on a mount with --prefetch none
)

// modeFloor is not a loader but the bench's measure of what any loader
// must at least pay here: filling fresh memory of the size it loads (see
// BenchReport.Floor).
const modeFloor Mode = "floor"

// AllModes returns the four modes in report order.
func AllModes() []Mode { return []Mode{ModeFull, ModeSparse, ModeLazy, ModeLazyNoPrefetch} }

// Letter returns the mode's letter in reports: a, b, c or d.
func (m Mode) Letter() string {
	switch m {
	case ModeFull:
		return "a"
	case ModeSparse:
		return "b"
	case ModeLazy:
		return "c"
	case ModeLazyNoPrefetch:
		return "d"
	}
	return "?"
}

// Describe returns a short human name of the mode.
func (m Mode) Describe() string {
	switch m {
	case ModeFull:
		return "full eager"
	case ModeSparse:
		return "sparse eager"
	case ModeLazy:
		return "lazy + prefetch"
	case ModeLazyNoPrefetch:
		return "lazy, no prefetch"
	}
	return string(m)
}

func (m Mode) lazy() bool { return m == ModeLazy || m == ModeLazyNoPrefetch }

// parseMode accepts a mode's name or its letter (a-d).
func parseMode(s string) (Mode, error) {
	s = strings.ToLower(strings.TrimSpace(s))
	for _, m := range AllModes() {
		if s == string(m) || s == m.Letter() {
			return m, nil
		}
	}
	return "", fmt.Errorf("%w: unknown mode %q (want full, sparse, lazy, lazy-noprefetch or a-d)", ErrBadConfig, s)
}

// ParseModes parses a list of mode names such as [a c] or [full lazy] (a
// --modes flag); an empty list gives nil, which Bench takes as AllModes().
func ParseModes(names []string) ([]Mode, error) {
	var out []Mode
	for _, f := range names {
		m, err := parseMode(f)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func containsMode(ms []Mode, m Mode) bool {
	for _, x := range ms {
		if x == m {
			return true
		}
	}
	return false
}
