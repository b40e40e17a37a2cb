package storeapi

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/ckptfs/ckptfs/index"
)

// Code is an error's kind on the wire. Codes are part of the protocol: a
// client tests them, never the message.
type Code string

// The error codes of v1.
const (
	CodeBadRequest        Code = "bad_request"        // malformed request: bad JSON, unknown field, bad parameter
	CodeNotFound          Code = "not_found"          // no such endpoint (also an unknown version)
	CodeForbidden         Code = "forbidden"          // the peer may not use the store
	CodeRunNotFound       Code = "run_not_found"      // index.ErrRunNotFound
	CodeRunExists         Code = "run_exists"         // index.ErrRunExists
	CodeBadRunName        Code = "bad_run_name"       // index.ErrBadRunName
	CodeCheckpointMissing Code = "checkpoint_missing" // index.ErrCheckpointMissing
	CodeNoWorkingSet      Code = "no_working_set"     // index.ErrNoWorkingSet
	CodeBadInput          Code = "bad_input"          // index.ErrBadInput: uploaded data in the wrong format
	CodeCorrupt           Code = "corrupt"            // index.IsCorruption: the store failed a check
	CodeBusy              Code = "busy"               // the owner cannot take this request now
	CodeCanceled          Code = "canceled"           // the request was cancelled (client gone, owner stopping)
	CodeInternal          Code = "internal"           // anything else
)

// Error is the error body of every failed request, and the last event of a
// failed stream: a code and one line for a human.
type Error struct {
	Code    Code   `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Message }

// sentinels pairs codes with the index errors they stand for, so that a
// client's errors.Is works as it does on a local store. The first match
// wins.
var sentinels = []struct {
	code Code
	err  error
}{
	{CodeRunNotFound, index.ErrRunNotFound},
	{CodeRunExists, index.ErrRunExists},
	{CodeBadRunName, index.ErrBadRunName},
	{CodeCheckpointMissing, index.ErrCheckpointMissing},
	{CodeNoWorkingSet, index.ErrNoWorkingSet},
	{CodeBadInput, index.ErrBadInput},
	{CodeCorrupt, index.ErrCorrupt},
	{CodeCanceled, context.Canceled},
}

// Is makes errors.Is(err, index.ErrRunNotFound) (and the other sentinels)
// hold for an Error with the matching code.
func (e *Error) Is(target error) bool {
	for _, s := range sentinels {
		if s.code == e.Code {
			return s.err == target
		}
	}
	return false
}

// ErrorFor turns a Go error of the owner into its wire form.
func ErrorFor(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	code := CodeInternal
	switch {
	case index.IsCorruption(err):
		code = CodeCorrupt
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		code = CodeCanceled
	default:
		for _, s := range sentinels {
			if errors.Is(err, s.err) {
				code = s.code
				break
			}
		}
	}
	return &Error{Code: code, Message: OneLine(err.Error())}
}

// Status is the HTTP status that goes with a code.
func (c Code) Status() int {
	switch c {
	case CodeBadRequest, CodeBadRunName, CodeBadInput:
		return http.StatusBadRequest
	case CodeNotFound, CodeRunNotFound, CodeCheckpointMissing, CodeNoWorkingSet:
		return http.StatusNotFound
	case CodeForbidden:
		return http.StatusForbidden
	case CodeRunExists, CodeBusy:
		return http.StatusConflict
	case CodeCanceled:
		return 499 // as nginx: the client closed the request
	}
	return http.StatusInternalServerError
}

// OneLine is the first line of msg, without the "ckptfs: " a command
// puts in front of its errors.
func OneLine(msg string) string {
	if i := strings.IndexByte(msg, '\n'); i >= 0 {
		msg = msg[:i]
	}
	for strings.HasPrefix(msg, "ckptfs: ") {
		msg = msg[len("ckptfs: "):]
	}
	return msg
}
