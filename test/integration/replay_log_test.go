package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// TestReplayLogStore writes a deterministic run (instruction counts and a
// replay log of 0 bytes, a few bytes and several chunks, then a tail) and
// checks it through the CLI and a mount: info shows the counts and QEMU
// arguments, a copy of the store carries the log and verifies, replay.log
// of a mount of the copy reads byte-exact, and rm leaves nothing of it.
func TestReplayLogStore(t *testing.T) {
	testenv.RequireFUSE(t)
	ctx := context.Background()
	store := filepath.Join(t.TempDir(), "store")
	args := []string{"-machine", "pc", "-icount", "shift=auto,rr=record,rrfile=/tmp/rr.log"}
	st, err := index.Open(store, index.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	w, err := st.CreateRun(index.RunSpec{Name: "det", RAMSize: 64 * index.PageSize, Recorder: "test", Tracker: "none",
		Deterministic: true, QEMUArgs: args})
	if err != nil {
		t.Fatal(err)
	}
	big := make([]byte, 3<<20+5)
	for i := range big {
		big[i] = byte(i*31 + i>>12)
	}
	pieces := [][]byte{nil, []byte("0123456789"), big}
	var want []byte
	frame := make([]byte, index.PageSize)
	for i, p := range pieces {
		frame[0] = byte(i + 1)
		if err := w.Put(uint64(i), frame); err != nil {
			t.Fatal(err)
		}
		ic := uint64(1_000_000 * (i + 1))
		if _, err := w.Commit(ctx, index.CommitInfo{ICount: &ic, ReplayLog: p}); err != nil {
			t.Fatal(err)
		}
		want = append(want, p...)
	}
	if err := w.AppendReplayLog(ctx, []byte("tail"), true); err != nil {
		t.Fatal(err)
	}
	want = append(want, "tail"...)
	w.Close()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}

	var ri struct {
		Deterministic bool     `json:"deterministic"`
		QEMUArgs      []string `json:"qemu_args"`
	}
	if err := json.Unmarshal([]byte(mustCkptfs(t, store, "info", "det", "--json")), &ri); err != nil {
		t.Fatal(err)
	}
	if !ri.Deterministic || !slices.Equal(ri.QEMUArgs, args) {
		t.Errorf("info det --json: %+v", ri)
	}
	var is struct {
		ICount *uint64 `json:"icount"`
	}
	if err := json.Unmarshal([]byte(mustCkptfs(t, store, "info", "det", "2", "--json")), &is); err != nil {
		t.Fatal(err)
	}
	if is.ICount == nil || *is.ICount != 3_000_000 {
		t.Errorf("info det 2 --json: icount %v", is.ICount)
	}
	mustCkptfs(t, store, "verify", "det")

	// A copy of the store carries the log.
	cp := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", store, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	os.Remove(filepath.Join(cp, "ckptfs.lock"))
	mustCkptfs(t, cp, "verify", "det")

	mnt := filepath.Join(t.TempDir(), "mnt")
	d := startMount(t, cp, mnt)
	logPath := filepath.Join(mnt, "det", "replay.log")
	wantPath := filepath.Join(t.TempDir(), "want.log")
	if err := os.WriteFile(wantPath, want, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cmp", logPath, wantPath).CombinedOutput(); err != nil {
		t.Fatalf("cmp replay.log: %v %s", err, out)
	}
	var rj struct {
		Deterministic bool     `json:"deterministic"`
		QEMUArgs      []string `json:"qemu_args"`
	}
	data, err := os.ReadFile(filepath.Join(mnt, "det", "run.json"))
	if err != nil || json.Unmarshal(data, &rj) != nil || !rj.Deterministic || !slices.Equal(rj.QEMUArgs, args) {
		t.Errorf("run.json: %v %s", err, data)
	}
	d.stop(t)

	// rm through the CLI; then nothing of the run is left to verify.
	mustCkptfs(t, cp, "rm", "det")
	if code, _, errs := ckptfs(t, cp, "info", "det"); code == 0 || !strings.Contains(errs, "not found") {
		t.Errorf("info after rm: exit %d, %s", code, errs)
	}
	mustCkptfs(t, cp, "verify")
	st, err = index.Open(cp, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReplayLog("det"); err == nil {
		t.Error("the log of a removed run is still readable")
	}
	st.Close()

	// The original: still whole, byte for byte.
	st, err = index.Open(store, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	l, err := st.ReplayLog("det")
	if err != nil || !l.Complete() {
		t.Fatalf("replay log: %v", err)
	}
	got := make([]byte, l.Size())
	if n, err := l.ReadAt(got, 0); n != len(want) || err != nil || !bytes.Equal(got, want) {
		t.Fatalf("replay log read %d bytes, %v", n, err)
	}
}
