package replay

import (
	"slices"
	"strings"
	"testing"
)

// detRecorded is what ckptfs record --deterministic runs QEMU with: the
// user's machine arguments plus the recorder's RAM backend, serial, QMP,
// record mode, -S and working-set plugin.
var detRecorded = []string{
	"-machine", "pc,accel=tcg", "-m", "256M", "-nodefaults", "-no-user-config",
	"-display", "none", "-no-reboot", "-kernel", "/g/vmlinuz", "-initrd", "/g/initramfs.gz",
	"-append", "console=ttyS0 panic=-1",
	"-object", "memory-backend-file,id=ram0,size=256M,mem-path=/dev/shm/p.ram,share=on",
	"-machine", "memory-backend=ram0", "-serial", "file:/tmp/p/serial",
	"-qmp", "unix:/tmp/p/sock,server=on,wait=off",
	"-icount", "shift=auto,rr=record,rrfile=/tmp/p/log", "-S",
	"-plugin", "/tmp/ckptfs-ws.so,ram=/dev/shm/p.ram,counters=/tmp/p/cnt",
}

func TestIntervalArgs(t *testing.T) {
	spec := intervalArgSpec{Recorded: detRecorded, RAMFile: "/mnt/r/3.ram", LogFile: "/mnt/r/replay.log",
		RAMSize: 256 << 20, QMPSocket: "/tmp/x/qmp.sock"}
	tests := []struct {
		name     string
		edit     func(*intervalArgSpec)
		want     []string // substrings of the joined command line
		wantNot  []string
		wantTail []string
		err      string
	}{
		{
			name: "recorded",
			want: []string{
				"-machine pc -nodefaults -no-user-config -display none -no-reboot -kernel /g/vmlinuz",
				"-append console=ttyS0 panic=-1 -machine memory-backend=ram0 -serial null " +
					"-accel tcg -m 256M -object memory-backend-file,id=ram0,size=268435456,mem-path=/mnt/r/3.ram,share=off " +
					"-icount shift=auto,rr=replay,rrfile=/mnt/r/replay.log -S -incoming defer -global migration.send-configuration=off " +
					"-qmp unix:/tmp/x/qmp.sock,server=on,wait=off",
			},
			wantNot: []string{"/dev/shm/p.ram", "/tmp/p/", "rr=record", "accel=tcg", "ckptfs-ws.so", "share=on"},
		},
		{
			name: "plugins",
			edit: func(s *intervalArgSpec) {
				s.Plugins = []string{"/usr/lib/libinsn.so,inline=on", "file=/x/hot.so"}
			},
			wantTail: []string{"-plugin", "/usr/lib/libinsn.so,inline=on", "-plugin", "file=/x/hot.so"},
			wantNot:  []string{"ckptfs-ws.so"},
		},
		{
			name: "full checkpoint, commas escaped",
			edit: func(s *intervalArgSpec) { s.RAMFile = "/mnt/a,b/r/full/3.ram"; s.LogFile = "/mnt/a,b/r/replay.log" },
			want: []string{"mem-path=/mnt/a,,b/r/full/3.ram,share=off", "rrfile=/mnt/a,,b/r/replay.log"},
		},
		{
			name: "no display, default devices, other icount options",
			edit: func(s *intervalArgSpec) {
				s.Recorded = []string{"-M", "q35", "-icount", "shift=7,align=off,rr=record,rrfile=/l,rrsnapshot=init", "-m", "256M"}
			},
			want:    []string{"-M q35 -accel tcg -m 256M", "-machine memory-backend=ram0", "-icount shift=7,align=off,rr=replay,rrfile=/mnt/r/replay.log", "-display none", "-serial null"},
			wantNot: []string{"rrsnapshot", "rrfile=/l"},
		},
		{
			name: "not recorded in record mode",
			edit: func(s *intervalArgSpec) { s.Recorded = []string{"-machine", "pc"} },
			err:  "no -icount",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := spec
			if tc.edit != nil {
				tc.edit(&s)
			}
			args, err := intervalArgs(s)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			line := strings.Join(args, " ")
			for _, w := range tc.want {
				if !strings.Contains(line, w) {
					t.Errorf("missing %q in\n%s", w, line)
				}
			}
			for _, w := range tc.wantNot {
				if strings.Contains(line, w) {
					t.Errorf("unexpected %q in\n%s", w, line)
				}
			}
			if tc.wantTail != nil && !slices.Equal(args[len(args)-len(tc.wantTail):], tc.wantTail) {
				t.Errorf("tail %q, want %q", args[len(args)-len(tc.wantTail):], tc.wantTail)
			}
			for _, once := range []string{"-S", "-incoming", "-icount", "-qmp", "-object", "-accel", "-m", "-display"} {
				if n := count(args, once); n > 1 {
					t.Errorf("%s %d times in\n%s", once, n, line)
				}
			}
		})
	}
}

func count(args []string, a string) int {
	n := 0
	for _, x := range args {
		if x == a {
			n++
		}
	}
	return n
}

func TestPluginFile(t *testing.T) {
	for in, want := range map[string]string{
		"/a/b.so":               "/a/b.so",
		"/a/b.so,x=1,y=2":       "/a/b.so",
		"file=/a/b.so,x=1":      "/a/b.so",
		"/a/with,,comma.so,x=1": "/a/with,comma.so",
	} {
		if got := pluginFile(in); got != want {
			t.Errorf("pluginFile(%q) = %q, want %q", in, got, want)
		}
	}
}
