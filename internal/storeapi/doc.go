// Package storeapi is the typed API of a ckptfs store's owner: the
// requests, responses, error codes and streamed body formats of the store
// socket (DIR/ckptfs.sock), and a client for it. The socket speaks it
// today; a server for other machines (DESIGN.md, `mount --serve`) is meant
// to speak the same, so nothing here assumes a unix socket, the caller's
// working directory or a command line.
//
// # Invariants
//
//   - Every path starts with the version (/v1). Fields may be added within
//     a version and clients ignore fields they do not know; servers refuse
//     unknown fields in requests. Anything else that changes makes /v2.
//   - A failed request answers a non-2xx status and {"error": Error}; an
//     Error is a Code (the part a client tests) and one line for a human.
//     Codes that stand for an index error make errors.Is(err,
//     index.ErrRunNotFound) and its kin hold on the client.
//   - Long requests (import, verify, pack, record) answer a stream of
//     Events, one JSON line each, that ends with exactly one Result or
//     Error. A stream that ends otherwise was cut off: the client reports
//     ErrConnectionLost, never success.
//   - An import sends its dumps in the request body (importfmt.go); an
//     export answers extents (extents.go). Neither names a file of the
//     client: paths in requests are the server's (a recording's QMP socket
//     and RAM file), absolute.
//   - The package imports index only, for the types that go on the wire
//     (index.RunInfo, IntervalStats, VerifyReport, PackStats are already the
//     JSON of `ckptfs info --json`), and never go-fuse.
package storeapi
