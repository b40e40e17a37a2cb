// Package rawfmt holds the plain-text and raw formats ckptfs reads from users:
// the Linux list format of working sets and raw RAM images. It imports
// nothing of Pebble so that its fuzz targets build and run quickly; package
// index re-exports what it offers.
package rawfmt

import "errors"

// PageSize is the frame size of a raw image.
const PageSize = 4096

// ErrBadInput marks input that is not in the expected format. index.ErrBadInput
// is the same error.
var ErrBadInput = errors.New("index: bad input")
