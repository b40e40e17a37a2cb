package index

import (
	"fmt"
	"regexp"
)

var runNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidRunName reports whether name is a valid run name (DESIGN.md: Words).
func ValidRunName(name string) error {
	if !runNameRE.MatchString(name) {
		return fmt.Errorf("%w %q: want 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit", ErrBadRunName, name)
	}
	return nil
}
