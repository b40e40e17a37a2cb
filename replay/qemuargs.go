package replay

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
)

// qemuArgs returns QEMU's arguments (without the binary) for cfg, which must
// have RAMSize set (resolveQEMU does it). It reads nothing. The order:
// the recorded arguments (filtered), then the replay's own
//
//	-accel tcg -m SIZE
//	-object memory-backend-file,id=ID,size=BYTES,mem-path=MNT/RUN/full/I.ram,share=off
//	-machine memory-backend=ID -qmp unix:SOCK,server=on,wait=off
//	-serial file:SERIAL -display none -S -incoming defer
//
// (each only where the arguments do not already say it), then cfg.Args.
func qemuArgs(cfg QEMUConfig) []string {
	all := append(append([]string(nil), cfg.RecordedArgs...), cfg.Args...)
	id := cfg.BackendID
	if id == "" {
		id = backendFromArgs(all)
	}
	if id == "" {
		id = defaultBackendID
	}
	rec, hadSerial := filterRecorded(cfg.RecordedArgs, id, cfg.SerialPath)

	mem := filepath.Join(cfg.Mount, cfg.Run, "full", strconv.Itoa(cfg.Interval)+".ram")
	if cfg.Sparse {
		mem = filepath.Join(cfg.Mount, cfg.Run, strconv.Itoa(cfg.Interval)+".ram")
	}
	out := rec
	if !userAccel(cfg.Args) {
		accel := cfg.Accel
		if accel == "" {
			accel = "tcg"
		}
		out = append(out, "-accel", accel)
	}
	if _, ok := optionValue(cfg.Args, "m"); !ok {
		out = append(out, "-m", memArg(cfg.RAMSize))
	}
	out = append(out, "-object", fmt.Sprintf("memory-backend-file,id=%s,size=%d,mem-path=%s,share=off",
		id, cfg.RAMSize, mem))
	if backendFromArgs(all) == "" {
		out = append(out, "-machine", "memory-backend="+id)
	}
	if cfg.QMPSocket != "" {
		out = append(out, "-qmp", "unix:"+cfg.QMPSocket+",server=on,wait=off")
	}
	if cfg.SerialPath != "" && !hadSerial {
		if _, user := optionValue(cfg.Args, "serial"); !user {
			out = append(out, "-serial", "file:"+cfg.SerialPath)
		}
	}
	if !hasOption(all, "display") && !hasOption(all, "nographic") {
		out = append(out, "-display", "none")
	}
	out = append(out, "-S", "-incoming", "defer")
	return append(out, cfg.Args...)
}

// optName returns the option name of an argument ("-m" and "--m" give "m"),
// or "" when it is not an option.
func optName(a string) string {
	if !strings.HasPrefix(a, "-") || a == "-" {
		return ""
	}
	return strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
}

// optionValue returns the value of the last option name in args.
func optionValue(args []string, name string) (string, bool) {
	v, ok := "", false
	for i := 0; i+1 < len(args); i++ {
		if optName(args[i]) == name {
			v, ok = args[i+1], true
			i++
		}
	}
	return v, ok
}

func hasOption(args []string, name string) bool {
	for _, a := range args {
		if optName(a) == name {
			return true
		}
	}
	return false
}

// userAccel reports whether args choose an accelerator.
func userAccel(args []string) bool {
	for i, a := range args {
		switch optName(a) {
		case "accel", "enable-kvm":
			return true
		case "machine", "M":
			if i+1 < len(args) && optionParam(args[i+1], "accel") != "" {
				return true
			}
		}
	}
	return false
}

// optionParam returns key's value in a QEMU option string "a,key=v,b=w".
func optionParam(s, key string) string {
	for _, p := range strings.Split(s, ",") {
		if v, ok := strings.CutPrefix(p, key+"="); ok {
			return v
		}
	}
	return ""
}

func backendFromArgs(args []string) string {
	id := ""
	for i := 0; i+1 < len(args); i++ {
		if n := optName(args[i]); n == "machine" || n == "M" {
			if v := optionParam(args[i+1], "memory-backend"); v != "" {
				id = v
			}
		}
	}
	return id
}

// filterRecorded drops from the recording's arguments what belongs to the
// recording process: its RAM backend (the one with id), -m, -mem-path, the
// accelerator, QMP and monitors, -incoming, -S, -daemonize, -pidfile,
// -loadvm. Serial outputs become "null", except the first, which becomes
// serialPath when set; hadSerial reports whether there was one.
func filterRecorded(args []string, id, serialPath string) (out []string, hadSerial bool) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		val := ""
		if i+1 < len(args) {
			val = args[i+1]
		}
		switch optName(a) {
		case "qmp", "qmp-pretty", "monitor", "incoming", "pidfile", "loadvm", "mem-path", "m", "accel":
			i++
			continue
		case "S", "daemonize", "mem-prealloc", "enable-kvm":
			continue
		case "object":
			if strings.HasPrefix(val, "memory-backend-") && optionParam(val, "id") == id {
				i++
				continue
			}
		case "machine", "M":
			var keep []string
			for _, p := range strings.Split(val, ",") {
				if !strings.HasPrefix(p, "accel=") {
					keep = append(keep, p)
				}
			}
			i++
			if len(keep) > 0 && strings.Join(keep, "") != "" {
				out = append(out, a, strings.Join(keep, ","))
			}
			continue
		case "serial":
			i++
			s := "null"
			if !hadSerial && serialPath != "" {
				s = "file:" + serialPath
			}
			hadSerial = true
			out = append(out, a, s)
			continue
		}
		out = append(out, a)
	}
	return out, hadSerial
}

// memArg formats a RAM size for -m.
func memArg(n uint64) string {
	if n%(1<<20) == 0 {
		return strconv.FormatUint(n>>20, 10) + "M"
	}
	return strconv.FormatUint(n, 10) + "B"
}

// parseArgList parses the meta value of MetaQEMUArgs: a JSON array of
// strings, or arguments separated by white space ("" gives none).
func parseArgList(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return []string{}, nil
	}
	if strings.HasPrefix(s, "[") {
		var out []string
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			return nil, err
		}
		return out, nil
	}
	return strings.Fields(s), nil
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
