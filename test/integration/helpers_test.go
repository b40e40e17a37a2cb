// Package integration holds the tests that drive the ckptfs binary as a user
// would: real mounts, real recordings, real QEMU guests.
package integration

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// ckptfsBin is the binary under test, built once by TestMain.
var ckptfsBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "ckptfs-it-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ckptfsBin = filepath.Join(dir, "ckptfs")
	out, err := exec.Command("go", "build", "-o", ckptfsBin, module+"/cmd/ckptfs").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building ckptfs: %v\n%s", err, out)
		os.Exit(1)
	}
	// The working-set plugin goes beside the binary, where record
	// --deterministic looks for it, as make puts it.
	out, err = exec.Command("cc", "-O2", "-Wall", "-shared", "-fPIC", "-o", filepath.Join(dir, "ckptfs-ws.so"),
		filepath.Join("..", "..", "kvmrec", "wsplugin", "wsplugin.c")).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "building the working-set plugin: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ckptfs runs the binary to completion.
func ckptfs(t testing.TB, store string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(ckptfsBin, append([]string{"--store", store}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, out.String(), errb.String()
}

func mustCkptfs(t testing.TB, store string, args ...string) string {
	t.Helper()
	code, out, errs := ckptfs(t, store, args...)
	if code != 0 {
		t.Fatalf("ckptfs %v: exit %d: %s", args, code, errs)
	}
	return out
}

// daemon is a background ckptfs process (mount, record, a guest).
type daemon struct {
	cmd    *exec.Cmd
	stderr *tailbuf.Buffer
	done   chan struct{}
}

func startDaemon(t testing.TB, args ...string) *daemon {
	t.Helper()
	d := &daemon{cmd: exec.Command(ckptfsBin, args...), stderr: &tailbuf.Buffer{}, done: make(chan struct{})}
	d.cmd.Stderr = d.stderr
	d.cmd.Stdout = d.stderr
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		select {
		case <-d.done:
		default:
			d.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-d.done:
			case <-time.After(10 * time.Second):
				d.cmd.Process.Kill()
				<-d.done
			}
		}
	})
	return d
}

// stop sends SIGINT and waits for a clean exit.
func (d *daemon) stop(t testing.TB) {
	t.Helper()
	d.cmd.Process.Signal(os.Interrupt)
	select {
	case <-d.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("daemon did not stop on SIGINT: %s", d.stderr.String())
	}
	if code := d.cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("daemon exited %d after SIGINT: %s", code, d.stderr.String())
	}
}

// startMount starts `ckptfs mount` and waits until the mount answers.
func startMount(t testing.TB, store, mnt string, extra ...string) *daemon {
	t.Helper()
	os.MkdirAll(mnt, 0o700)
	d := startDaemon(t, append([]string{"--store", store, "mount", mnt}, extra...)...)
	waitFor(t, 20*time.Second, func() bool {
		_, err := os.Stat(filepath.Join(mnt, "."))
		return isMounted(mnt) && err == nil && strings.Contains(d.stderr.String(), "serving")
	}, "mount of "+mnt+": "+d.stderr.String())
	// A serving process re-executes itself with MADV_FREE for its heap
	// (cmd/ckptfs/godebug.go), unless the caller chose.
	if !strings.Contains(os.Getenv("GODEBUG"), "madvdontneed=") {
		env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", d.cmd.Process.Pid))
		if err != nil || !slices.ContainsFunc(strings.Split(string(env), "\x00"), func(kv string) bool {
			return strings.HasPrefix(kv, "GODEBUG=") && strings.Contains(kv, "madvdontneed=0")
		}) {
			t.Errorf("the mount runs without GODEBUG=madvdontneed=0 (%v)", err)
		}
	}
	return d
}

func isMounted(mnt string) bool {
	data, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == mnt {
			return true
		}
	}
	return false
}

func waitFor(t testing.TB, d time.Duration, cond func() bool, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// writeRandomDumps writes n raw RAM images of size bytes into dir as
// dump0, dump1, ...: the first random, each next one with its first changed
// bytes replaced by new random bytes. Random data does not compress, so the
// store holds what a test expects it to.
func writeRandomDumps(t *testing.T, dir string, n, size, changed int) []string {
	t.Helper()
	img := make([]byte, size)
	rand.Read(img)
	var dumps []string
	for i := 0; i < n; i++ {
		if i > 0 {
			rand.Read(img[:changed])
		}
		p := filepath.Join(dir, fmt.Sprintf("dump%d", i))
		if err := os.WriteFile(p, img, 0o600); err != nil {
			t.Fatal(err)
		}
		dumps = append(dumps, p)
	}
	return dumps
}

// checkExports exports checkpoints 0..n-1 of run and fails unless each is
// byte-identical to its dump; what says which situation is being checked.
func checkExports(t *testing.T, store, run string, dumps []string, n int, what string) {
	t.Helper()
	exp := filepath.Join(t.TempDir(), "exp")
	for i := 0; i < n; i++ {
		mustCkptfs(t, store, "export", "--run", run, "--interval", fmt.Sprint(i), exp)
		got, _ := os.ReadFile(exp)
		want, _ := os.ReadFile(dumps[i])
		if !bytes.Equal(got, want) {
			t.Fatalf("checkpoint %d %s differs from its dump", i, what)
		}
	}
}
