package replay

import (
	"fmt"
	"strings"
)

// intervalArgSpec is what a deterministic replay's command line is made of.
type intervalArgSpec struct {
	Recorded  []string // run.json's qemu_args: the recording's whole command line
	RAMFile   string   // MNT/<run>/<i>.ram or MNT/<run>/full/<i>.ram
	LogFile   string   // MNT/<run>/replay.log
	RAMSize   uint64
	QMPSocket string
	Plugins   []string // -plugin values, passed through in order
	Preload   bool     // prealloc=on: QEMU reads all of RAMFile before it starts
	// ReadAround is the working-set plugin, loaded (before Plugins) to turn
	// the kernel's read-around off for guest RAM; "" for none.
	ReadAround string
}

// intervalArgs returns QEMU's arguments (binary excluded) for the replay of
// one interval: the recorded arguments without what the recorder added (its
// RAM backend, -m, QMP, monitors, -incoming, -S, the accelerator, its
// -plugin, -gdb, -icount), serial outputs sent to null, and then
//
//	-accel tcg -m SIZE
//	-object memory-backend-file,id=ID,size=BYTES,mem-path=RAMFILE,share=off
//	[-machine memory-backend=ID]      (when the recorded arguments lack it)
//	-icount OPTS,rr=replay,rrfile=LOG (OPTS: the recorded ones, shift=... etc.)
//	-S -incoming defer -global migration.send-configuration=off
//	-qmp unix:SOCK,server=on,wait=off [-display none] [-serial null]
//	[-plugin WS,ram=RAMFILE,random=on] (ckptfs's plugin: no read-around)
//	-plugin P ...                     (the user's, in order)
//
// -display none only when the recording chose no display; -serial null only
// when it named no serial port and kept QEMU's default devices (it then
// replaces the default backend; the device set stays the recording's).
func intervalArgs(s intervalArgSpec) ([]string, error) {
	icount, ok := optionValue(s.Recorded, "icount")
	if !ok {
		return nil, fmt.Errorf("%w: the recorded QEMU arguments have no -icount (not a deterministic recording)", ErrNotDeterministic)
	}
	// Drop what filterRecorded does not know: the recorder's -icount, its
	// plugins and its gdbstub (their arguments name the recording's
	// temporary files).
	var rec []string
	for i := 0; i < len(s.Recorded); i++ {
		switch optName(s.Recorded[i]) {
		case "icount", "plugin", "gdb":
			i++
			continue
		case "s":
			continue
		}
		rec = append(rec, s.Recorded[i])
	}
	id := backendFromArgs(s.Recorded)
	if id == "" {
		id = defaultBackendID
	}
	out, hadSerial := filterRecorded(rec, id, "")
	var keep []string
	for _, p := range strings.Split(icount, ",") {
		if p == "" || strings.HasPrefix(p, "rr=") || strings.HasPrefix(p, "rrfile=") || strings.HasPrefix(p, "rrsnapshot=") {
			continue
		}
		keep = append(keep, p)
	}
	keep = append(keep, "rr=replay", "rrfile="+optEscape(s.LogFile))
	out = append(out, "-accel", "tcg", "-m", memArg(s.RAMSize),
		"-object", fmt.Sprintf("memory-backend-file,id=%s,size=%d,mem-path=%s,share=off%s", id, s.RAMSize, optEscape(s.RAMFile), preloadOpt(s.Preload)))
	if backendFromArgs(out) == "" {
		out = append(out, "-machine", "memory-backend="+id)
	}
	out = append(out, "-icount", strings.Join(keep, ","),
		"-S", "-incoming", "defer", "-global", "migration.send-configuration=off",
		"-qmp", "unix:"+optEscape(s.QMPSocket)+",server=on,wait=off")
	if !hasOption(out, "display") && !hasOption(out, "nographic") {
		out = append(out, "-display", "none")
	}
	if !hadSerial && !hasOption(out, "nodefaults") {
		out = append(out, "-serial", "null")
	}
	if s.ReadAround != "" {
		out = append(out, "-plugin", optEscape(s.ReadAround)+",ram="+optEscape(s.RAMFile)+",random=on")
	}
	for _, p := range s.Plugins {
		out = append(out, "-plugin", p)
	}
	return out, nil
}

// optEscape escapes commas for a QEMU option value.
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// pluginFile returns the shared object of a -plugin value "SO[,ARGS]" or
// "file=SO[,ARGS]".
func pluginFile(p string) string {
	f := p
	// A doubled comma is an escaped one inside the value.
	for i := 0; i < len(f); i++ {
		if f[i] == ',' {
			if i+1 < len(f) && f[i+1] == ',' {
				i++
				continue
			}
			f = f[:i]
			break
		}
	}
	f = strings.ReplaceAll(f, ",,", ",")
	return strings.TrimPrefix(f, "file=")
}

// preloadOpt is the memory backend option that makes QEMU fault in all of
// guest RAM at start (a conventional restore, which loads the whole
// checkpoint), or "".
func preloadOpt(preload bool) string {
	if preload {
		return ",prealloc=on"
	}
	return ""
}
