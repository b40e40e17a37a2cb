package index

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/internal/testenv"
)

const openChildEnv = "CKPTFS_INDEX_OPEN_CHILD"

// TestOpenPermissionDenied: a store this uid may not read is reported as
// permission denied, not as "no store". Root reads everything, so the open
// runs in a child process as nobody (setpriv).
func TestOpenPermissionDenied(t *testing.T) {
	testenv.RequireRoot(t, "to open a store as another uid")
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("needs setpriv to open a store as another uid")
	}
	// A directory anyone may enter, holding a copy of this test binary
	// that anyone may run, and an owner-only (0700) store of root's.
	top, err := os.MkdirTemp("", "ckptfs-access-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(top)
	os.Chmod(top, 0o755)
	self, _ := os.Executable()
	bin := filepath.Join(top, "index.test")
	copyFile(t, self, bin)
	os.Chmod(bin, 0o755)
	store := filepath.Join(top, "S")
	st, err := Open(store, Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()

	cmd := exec.Command(setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), openChildEnv+"="+store)
	out, _ := cmd.CombinedOutput()
	msg := strings.TrimSpace(string(out))
	if !strings.Contains(msg, "permission denied") || strings.Contains(msg, "no store") {
		t.Fatalf("open of an unreadable store as another uid: %q; want permission denied", msg)
	}
	t.Logf("%s", msg)
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}
