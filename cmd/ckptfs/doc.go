// Command ckptfs records running VMs as incremental memory checkpoints and
// serves every checkpoint as a sparse guest-RAM file through FUSE. It wires
// the packages (index, fs, kvmrec, replay) and owns flags, messages and
// exit codes; it is the only package that imports urfave/cli.
//
// # Invariants
//
//   - A failed command prints one line on stderr, "ckptfs: ..." (run strips
//     a repeated prefix), and exits non-zero: 2 for bad usage, else 1, or
//     the code of the forwarded command. Bad input never panics.
//   - One process owns a store (Pebble allows one). While mount or record
//     owns it, every other command on that store is forwarded, whole, to
//     that process over the store socket (server.go) and runs there with
//     the client's working directory (ownedStore.cwd); its output and exit
//     code come back over the socket.
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
// arguments; store.go opens or forwards to the store, server.go is the
// socket; storecmds.go holds import, export, ls, info, verify, rm and pack;
// mountcmd.go, recordcmd.go, replaycmds.go, replaybench.go and demo.go the
// commands they are named for; metrics.go the Prometheus endpoint;
// helperprocs.go the processes the binary re-executes itself as;
// godebug.go the runtime setting of a process that serves a mount;
// progress.go progress bars; wsplugin.go finds the working-set plugin.
package main
