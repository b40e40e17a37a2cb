// Command ckptfs records running VMs as incremental memory checkpoints and
// serves every checkpoint as a sparse guest-RAM file through FUSE. It wires
// the packages (index, fs, kvmrec, replay) and owns flags, messages and
// exit codes; it is the only package that imports urfave/cli.
//
// # Invariants
//
//   - A failed command prints one line on stderr, "ckptfs: ..." (run strips
//     a repeated prefix), and exits non-zero: 2 for bad usage, else 1. Bad
//     input never panics.
//   - One process owns a store (Pebble allows one). While mount, record or
//     demo owns it, the store commands reach it through the typed store API
//     on its socket (server.go, internal/storeapi): the same code path as on
//     a local store (backend.go), with the same output and exit code; no
//     command line runs in the owner.
//   - A process that serves a mount never maps a file of that mount: the
//     bench's measurements and the synthetic guest run as re-executions of
//     this binary (runIfHelperProcess, first thing in main).
//   - Flags may follow positional arguments (permuteArgs), as DESIGN.md
//     writes the commands; every flag says in --help what it takes and does
//     (TestEveryFlagHasUsage).
//
// # Files
//
// main.go builds the app and maps errors to exit codes; args.go reorders
// arguments; store.go opens the store or reaches its owner, backend.go is
// the store commands' interface over a local store or the API client,
// server.go serves the API on the socket; storecmds.go holds import, export,
// ls, info, verify, rm and pack; mountcmd.go, recordcmd.go (recording.go
// runs a recording, locally or in the owner), replaycmds.go, replaybench.go,
// demo.go and demodet.go (the deterministic part) the commands they are
// named for; metrics.go the Prometheus endpoint;
// helperprocs.go the processes the binary re-executes itself as;
// godebug.go the runtime setting of a process that serves a mount;
// progress.go progress bars; wsplugin.go finds the working-set plugin.
package main
