package main

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// permuteArgs moves a command's flags in front of its positional arguments,
// so that `ckptfs mount MNT --prefetch none` and `ckptfs info R I --json`
// work as DESIGN.md writes them: urfave/cli v2 stops parsing flags at the
// first positional argument. Everything after "--" is left alone.
func permuteArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	i := commandIndex(app, args)
	out := append([]string(nil), args[:i]...)
	if i >= len(args) {
		return out
	}
	cmd := findCommand(app.Commands, args[i])
	out = append(out, args[i])
	i++
	for cmd != nil && len(cmd.Subcommands) > 0 && i < len(args) {
		sub := findCommand(cmd.Subcommands, args[i])
		if sub == nil {
			break
		}
		out = append(out, args[i])
		cmd = sub
		i++
	}
	if cmd == nil {
		return append(out, args[i:]...)
	}
	var flags, positional, rest []string
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = args[i:]
			break
		}
		if strings.HasPrefix(a, "-") && len(a) > 1 && !negativeNumber(cmd.Flags, a) {
			flags = append(flags, a)
			if takesValue(cmd.Flags, a) && i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
			continue
		}
		positional = append(positional, a)
	}
	out = append(out, flags...)
	for _, p := range positional {
		if strings.HasPrefix(p, "-") {
			// A negative number: end the flags so that the command sees
			// it as the argument it is (and says what is wrong with it).
			out = append(out, "--")
			break
		}
	}
	out = append(out, positional...)
	return append(out, rest...)
}

// negativeNumber reports whether a ("-1") is a negative number rather than
// a flag of flags: `ckptfs info R -1` gives an interval, not a flag.
func negativeNumber(flags []cli.Flag, a string) bool {
	if len(a) < 2 || a[0] != '-' || strings.TrimLeft(a[1:], "0123456789") != "" {
		return false
	}
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == a[1:] {
				return false
			}
		}
	}
	return true
}

// commandIndex returns the index in args of the command's name: the first
// argument after the program name and the global flags (and their values).
// It is len(args) when there is none.
func commandIndex(app *cli.App, args []string) int {
	i := 1
	for i < len(args) && strings.HasPrefix(args[i], "-") && args[i] != "--" {
		if takesValue(app.Flags, args[i]) && i+1 < len(args) {
			i++
		}
		i++
	}
	return min(i, len(args))
}

// servesMount reports whether the command line args starts a process that
// serves a mount: mount, demo, or record with --mount.
func servesMount(app *cli.App, args []string) bool {
	i := commandIndex(app, args)
	if i >= len(args) {
		return false
	}
	cmd := findCommand(app.Commands, args[i])
	switch {
	case cmd == nil:
		return false
	case cmd.Name == "mount" || cmd.Name == "demo":
		return true
	case cmd.Name == "record":
		for _, a := range args[i+1:] {
			if a == "--" {
				break
			}
			if name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "="); strings.HasPrefix(a, "-") && name == "mount" {
				return true
			}
		}
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// takesValue reports whether the flag token a (without "=value") names a
// flag that consumes the next argument.
func takesValue(flags []cli.Flag, a string) bool {
	if strings.Contains(a, "=") {
		return false
	}
	name := strings.TrimLeft(a, "-")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				_, isBool := f.(*cli.BoolFlag)
				return !isBool
			}
		}
	}
	return false
}
