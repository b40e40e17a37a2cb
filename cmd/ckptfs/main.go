package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/ckptfs/ckptfs/internal/storeapi"
	"github.com/urfave/cli/v2"

	"github.com/ckptfs/ckptfs/index"
)

// exitError carries the exit code of a failed command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErrorf marks bad usage: exit code 2.
func usageErrorf(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

func main() {
	runIfHelperProcess()
	reexecForMount()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args, os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes one command line and returns its exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	app := newApp(stdin, stdout, stderr)
	notFound := false
	app.CommandNotFound = func(c *cli.Context, name string) {
		notFound = true
		fmt.Fprintf(stderr, "ckptfs: no command %q (see ckptfs --help)\n", name)
	}
	err := app.RunContext(ctx, permuteArgs(app, args))
	if err == nil {
		if notFound {
			return 2
		}
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
	} else if errors.Is(err, index.ErrBadRunName) {
		code = 2 // bad usage, whichever command found it (import and pack check first)
	}
	if !errors.Is(err, errAlreadyReported) {
		fmt.Fprintf(stderr, "ckptfs: %s\n", oneLine(err))
	}
	return code
}

var errAlreadyReported = errors.New("already reported")

// oneLine is the first line of err's message, without the "ckptfs: "
// that run puts in front (errors of other packages may carry it already).
func oneLine(err error) string { return storeapi.OneLine(err.Error()) }

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:      "ckptfs",
		Usage:     "record a VM as incremental memory checkpoints and serve them as sparse files",
		Reader:    stdin,
		Writer:    stdout,
		ErrWriter: stderr,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "store", Usage: "store directory `DIR` (default $CKPTFS_STORE, else ./ckpt-store)"},
			&cli.StringFlag{Name: "log-level", Value: "info", Usage: "`LEVEL`: debug, info, warn or error"},
		},
		Before: func(c *cli.Context) error {
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(c.String("log-level"))); err != nil {
				return usageErrorf("--log-level: %v", err)
			}
			slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lvl})))
			return nil
		},
		OnUsageError: func(c *cli.Context, err error, isSubcommand bool) error {
			return usageErrorf("%v (see ckptfs --help)", err)
		},
		ExitErrHandler:  func(*cli.Context, error) {}, // run() reports errors
		HideHelpCommand: true,
		Commands: []*cli.Command{
			importCommand(), exportCommand(), lsCommand(), infoCommand(), verifyCommand(), rmCommand(), packCommand(),
			mountCommand(), recordCommand(), replayCommand(), demoCommand(), synthGuestCommand(),
		},
	}
	for _, cmd := range app.Commands {
		setUsageHandler(cmd)
	}
	return app
}

func setUsageHandler(cmd *cli.Command) {
	cmd.OnUsageError = func(c *cli.Context, err error, isSubcommand bool) error {
		return usageErrorf("%s: %v (see ckptfs %s --help)", cmd.Name, err, cmd.Name)
	}
	for _, sub := range cmd.Subcommands {
		setUsageHandler(sub)
	}
}
