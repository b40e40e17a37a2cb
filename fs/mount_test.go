package fs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/RoaringBitmap/roaring/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/testenv"
)

// Mounted tests. The test process only lists, stats, seeks and runs tools
// on the mount; everything that maps a file runs in a child process.

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// seekWalk reproduces the data frames of a file from SEEK_DATA/SEEK_HOLE.
func seekWalk(t *testing.T, path string) *roaring.Bitmap {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	bm := roaring.New()
	fd := int(f.Fd())
	for off := int64(0); off < st.Size(); {
		d, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		}
		if err != nil {
			t.Fatalf("SEEK_DATA %s at %d: %v", path, off, err)
		}
		h, err := unix.Seek(fd, d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatalf("SEEK_HOLE %s at %d: %v", path, d, err)
		}
		bm.AddRange(uint64(d)/pageSize, uint64(h+pageSize-1)/pageSize)
		off = h
	}
	return bm
}

func statT(t *testing.T, path string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v\n%s", path, err, b)
	}
}

// TestMountedRun checks a run of an on-disk store through a real mount:
// content, sparseness, seeks, attributes, read-only behaviour, concurrent
// children, and checkpoints committed while mounted.
func TestMountedRun(t *testing.T) {
	testenv.RequireFUSE(t)
	st := openStore(t)
	fx := newFixture("vm1", 4096, 7, 42) // 16 MiB guest, 7 checkpoints
	w := fx.create(t, st, 5)             // 0..4 now, 5 and 6 while mounted
	defer w.Close()
	reg := prometheus.NewRegistry()
	srv, mnt := mountT(t, FromIndex(st), MountOptions{Registry: reg, Store: st.Dir()})
	dir := filepath.Join(mnt, "vm1")
	tmp := t.TempDir()
	expFull := make([]string, len(fx.images))
	for i := range fx.images {
		expFull[i] = writeFile(t, tmp, fmt.Sprintf("full%d.img", i), fx.images[i])
	}

	t.Run("layout", func(t *testing.T) {
		ents, err := os.ReadDir(mnt)
		if err != nil || len(ents) != 1 || ents[0].Name() != "vm1" || !ents[0].IsDir() {
			t.Fatalf("root: %v %v", ents, err)
		}
		names := func(d string) string {
			ents, err := os.ReadDir(d)
			if err != nil {
				t.Fatal(err)
			}
			var s []string
			for _, e := range ents {
				s = append(s, e.Name())
			}
			return strings.Join(s, " ")
		}
		if got, want := names(dir), "0.dev 0.json 0.ram 0.ws 1.json 1.ram 1.ws 2.dev 2.json 2.ram 2.ws 3.json 3.ram 3.ws 4.dev 4.json full run.json"; got != want {
			t.Errorf("run dir:\n%s\nwant\n%s", got, want)
		}
		if got := names(filepath.Join(dir, "full")); got != "0.ram 1.ram 2.ram 3.ram 4.ram" {
			t.Errorf("full: %s", got)
		}
		var rj struct {
			RAMSize     uint64 `json:"ram_size"`
			PageSize    int    `json:"page_size"`
			Checkpoints int    `json:"checkpoints"`
			Intervals   int    `json:"intervals"`
			Recorder    string `json:"recorder"`
			Tracker     string `json:"tracker"`
		}
		readJSON(t, filepath.Join(dir, "run.json"), &rj)
		if rj.RAMSize != fx.frames*pageSize || rj.PageSize != pageSize || rj.Checkpoints != 5 || rj.Intervals != 4 || rj.Recorder != "test" {
			t.Errorf("run.json: %+v", rj)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "2.dev")); string(b) != "device state 2" {
			t.Errorf("2.dev = %q", b)
		}
		// Owner-only.
		if s := statT(t, dir); s.Mode != syscall.S_IFDIR|0o500 || s.Uid != uint32(os.Getuid()) {
			t.Errorf("run dir mode %o uid %d", s.Mode, s.Uid)
		}
		if s := statT(t, filepath.Join(dir, "0.ws")); s.Mode != syscall.S_IFREG|0o400 {
			t.Errorf("0.ws mode %o", s.Mode)
		}
		if fstype, ok := mountedAt(mnt); !ok || fstype != "fuse.ckptfs" {
			t.Errorf("mountinfo: %q %v", fstype, ok)
		}
		opts := mountOptionsOf(t, mnt)
		if !strings.Contains(opts, "default_permissions") || strings.Contains(opts, "allow_other") {
			t.Errorf("mount options %q", opts)
		}
	})

	t.Run("full", func(t *testing.T) {
		for i := range 5 {
			p := filepath.Join(dir, "full", strconv.Itoa(i)+".ram")
			run(t, "cmp", p, expFull[i])
			s := statT(t, p)
			nz := fx.nonZero(i)
			if s.Size != int64(fx.frames*pageSize) || uint64(s.Blocks) != nz.GetCardinality()*8 {
				t.Errorf("full/%d.ram: size %d blocks %d, want %d", i, s.Size, s.Blocks, nz.GetCardinality()*8)
			}
			if got := seekWalk(t, p); !got.Equals(nz) {
				t.Errorf("full/%d.ram: seek walk differs from the non-zero frames", i)
			}
		}
	})

	t.Run("sparse", func(t *testing.T) {
		for i := range 4 {
			p := filepath.Join(dir, strconv.Itoa(i)+".ram")
			ws := fx.ws[i]
			s := statT(t, p)
			if s.Size != int64(fx.frames*pageSize) || uint64(s.Blocks) != ws.GetCardinality()*8 {
				t.Errorf("%d.ram: size %d blocks %d, want %d", i, s.Size, s.Blocks, ws.GetCardinality()*8)
			}
			if got := seekWalk(t, p); !got.Equals(ws) {
				t.Errorf("%d.ram: seek walk %s, want %s", i, index.FormatList(got), index.FormatList(ws))
			}
			if b, _ := os.ReadFile(filepath.Join(dir, strconv.Itoa(i)+".ws")); string(b) != index.FormatList(ws) {
				t.Errorf("%d.ws = %q", i, b)
			}
			// cp keeps exactly the working set as data (cp
			// --sparse=always also makes all-zero data frames
			// holes, so those are not expected).
			cp := filepath.Join(tmp, fmt.Sprintf("copy%d", i))
			run(t, "cp", "--sparse=always", p, cp)
			want := roaring.AndNot(ws, roaring.Flip(fx.nonZero(i), 0, fx.frames))
			if got := seekWalk(t, cp); !got.Equals(want) {
				t.Errorf("cp --sparse=always of %d.ram keeps %d data frames, want %d", i, got.GetCardinality(), want.GetCardinality())
			}
			if du := strings.Fields(run(t, "du", "-B4096", "--apparent-size", cp))[0]; du != strconv.FormatUint(fx.frames, 10) {
				t.Errorf("copy apparent size %s", du)
			}
			if du := strings.Fields(run(t, "du", "-B4096", p))[0]; du != strconv.FormatUint(ws.GetCardinality(), 10) {
				t.Errorf("du %d.ram = %s, want %d", i, du, ws.GetCardinality())
			}
			if got, err := os.ReadFile(cp); err != nil || !bytes.Equal(got, fx.sparseImage(i)) {
				t.Errorf("copy of %d.ram has wrong bytes", i)
			}
		}
		// Reading every byte of 1.ram reads every hole: exactly the
		// frames outside W_1 are misses, or hole frames of folio
		// reads when the kernel retried refused readahead in folios.
		exp := writeFile(t, tmp, "sparse1.img", fx.sparseImage(1))
		var before struct{ Mount MountCounters }
		readJSON(t, filepath.Join(dir, "1.json"), &before)
		run(t, "cmp", filepath.Join(dir, "1.ram"), exp)
		var after struct {
			index.IntervalStats
			Mount MountCounters `json:"mount"`
		}
		readJSON(t, filepath.Join(dir, "1.json"), &after)
		holes := fx.frames - fx.ws[1].GetCardinality()
		misses := after.Mount.MissFrames - before.Mount.MissFrames
		folio := after.Mount.FolioHoleFrames - before.Mount.FolioHoleFrames
		if misses+folio != holes || after.Mount.Misses-before.Mount.Misses != misses {
			t.Errorf("reading all of 1.ram: %d miss frames in %d misses and %d folio hole frames, want %d holes",
				misses, after.Mount.Misses-before.Mount.Misses, folio, holes)
		}
		if after.WorkingSetFrames != fx.ws[1].GetCardinality() || after.Mount.Reads == 0 {
			t.Errorf("1.json: %+v", after)
		}
		out := run(t, "getfattr", "-d", filepath.Join(dir, "2.ram"))
		for _, want := range []string{`user.ckptfs.run="vm1"`, `user.ckptfs.interval="2"`,
			fmt.Sprintf(`user.ckptfs.ws_frames="%d"`, fx.ws[2].GetCardinality()),
			fmt.Sprintf(`user.ckptfs.data_frames="%d"`, fx.ws[2].GetCardinality())} {
			if !strings.Contains(out, want) {
				t.Errorf("getfattr -d lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("readonly", func(t *testing.T) {
		for _, p := range []string{filepath.Join(dir, "full", "3.ram"), filepath.Join(dir, "3.ram")} {
			var res privWriteResult
			if err := json.Unmarshal([]byte(runChild(t, "privwrite", p)), &res); err != nil {
				t.Fatal(err)
			}
			if res.OpenRDWR != "ok" || res.WriteErrno != syscall.EROFS.Error() || !res.Private {
				t.Errorf("%s: %+v", p, res)
			}
		}
		run(t, "cmp", filepath.Join(dir, "full", "3.ram"), expFull[3])
		if err := os.WriteFile(filepath.Join(dir, "new"), nil, 0o600); !errors.Is(err, syscall.EROFS) && !errors.Is(err, syscall.EACCES) {
			t.Errorf("creating a file: %v", err)
		}
		if err := os.Truncate(filepath.Join(dir, "full", "3.ram"), 0); !errors.Is(err, syscall.EROFS) {
			t.Errorf("truncate: %v", err)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		// 8 children fault different checkpoints at once.
		type job struct{ file, exp string }
		var jobs []job
		for i := range 5 {
			jobs = append(jobs, job{filepath.Join(dir, "full", strconv.Itoa(i)+".ram"), expFull[i]})
		}
		for i := range 3 {
			jobs = append(jobs, job{filepath.Join(dir, strconv.Itoa(i)+".ram"), writeFile(t, tmp, fmt.Sprintf("sp%d", i), fx.sparseImage(i))})
		}
		srv.evict("vm1", "0.ram") // not all cached from the tests before
		var wg sync.WaitGroup
		errs := make(chan error, len(jobs))
		for _, j := range jobs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cmd := childCmd("cmpmap", j.file, j.exp)
				if out, err := cmd.CombinedOutput(); err != nil {
					errs <- fmt.Errorf("%s: %v: %s", j.file, err, out)
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("appear", func(t *testing.T) {
		// Look up what does not exist yet, so a stale negative entry
		// would show.
		for _, p := range []string{"4.ram", "5.json", "full/5.ram"} {
			if _, err := os.Stat(filepath.Join(dir, p)); !os.IsNotExist(err) {
				t.Fatalf("%s before commit: %v", p, err)
			}
		}
		fx.write(t, w, 6)
		if s := statT(t, filepath.Join(dir, "4.ram")); uint64(s.Blocks) != fx.ws[4].GetCardinality()*8 {
			t.Errorf("4.ram blocks %d", s.Blocks)
		}
		run(t, "cmp", filepath.Join(dir, "full", "5.ram"), expFull[5])
		if _, err := os.Stat(filepath.Join(dir, "5.json")); err != nil {
			t.Error(err)
		}
		fx.write(t, w, 7)
		run(t, "cmp", filepath.Join(dir, "full", "6.ram"), expFull[6])
		var rj struct{ Checkpoints int }
		readJSON(t, filepath.Join(dir, "run.json"), &rj)
		if rj.Checkpoints != 7 {
			t.Errorf("run.json says %d checkpoints, want 7", rj.Checkpoints)
		}
		// A new run appears too.
		fx2 := newFixture("vm2", 64, 2, 9)
		fx2.create(t, st, 2).Close()
		if _, err := os.Stat(filepath.Join(mnt, "vm2", "0.ram")); err != nil {
			t.Error(err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		got := gather(t, reg)
		for _, name := range []string{"ckptfs_fs_reads_total", "ckptfs_fs_read_bytes_total", "ckptfs_fs_prefetch_bytes_total",
			"ckptfs_fs_ws_misses_total", "ckptfs_fs_read_seconds"} {
			if got[name] <= 0 {
				t.Errorf("metric %s = %v", name, got[name])
			}
		}
		if _, ok := got["ckptfs_fs_errors_total"]; !ok {
			t.Error("no ckptfs_fs_errors_total")
		}
		var status Status
		readJSON(t, filepath.Join(mnt, ".status"), &status)
		if status.Reads == 0 || status.Errors != 0 || status.Store != st.Dir() {
			t.Errorf(".status: %+v", status)
		}
		// One set of counters behind both views.
		if float64(status.Reads) != got["ckptfs_fs_reads_total"] || float64(status.Misses) != got["ckptfs_fs_ws_misses_total"] {
			t.Errorf(".status %+v disagrees with the metrics %v", status, got)
		}
	})
}

func metricValue(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	}
	return 0
}

func mountOptionsOf(t *testing.T, mnt string) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && fields[4] == mnt {
			return strings.Join(fields[5:], " ")
		}
	}
	t.Fatalf("%s not in mountinfo", mnt)
	return ""
}

// TestMountedCorruptFrame: a frame that fails its check is EIO for the read
// that needs it and one log line, never wrong bytes; the daemon lives on.
func TestMountedCorruptFrame(t *testing.T) {
	src, fx := memFixture("vm1", 1024, 2, 11)
	bad := uint64(300)
	src.corrupt("vm1", 1, bad)
	logger, lines := newTestLogger(t)
	srv, mnt := mountT(t, src, MountOptions{Logger: logger})
	p := filepath.Join(mnt, "vm1", "full", "1.ram")
	ddFrame := func(pfn uint64) ([]byte, error) {
		out := filepath.Join(t.TempDir(), "frame")
		b, err := exec.Command("dd", "if="+p, "of="+out, "bs=4096", "count=1", "skip="+strconv.FormatUint(pfn, 10)).CombinedOutput()
		if err != nil {
			return b, err
		}
		return os.ReadFile(out)
	}
	if out, err := ddFrame(bad); err == nil || !strings.Contains(string(out), "Input/output error") {
		t.Errorf("dd of the corrupt frame: %v %s", err, out)
	}
	if b, err := ddFrame(bad + 1); err != nil || !bytes.Equal(b, fx.frame(1, bad+1)) {
		t.Errorf("dd of the next frame: %v", err)
	}
	// A child mapping the file dies on the bad frame (SIGBUS) instead of
	// seeing wrong bytes.
	if out, err := childCmd("cmpmap", p, writeFile(t, t.TempDir(), "exp", fx.images[1])).CombinedOutput(); err == nil {
		t.Errorf("child compared a file with a corrupt frame successfully: %s", out)
	}
	var logged []string
	for len(lines) > 0 {
		logged = append(logged, <-lines)
	}
	if len(logged) == 0 || !strings.Contains(logged[0], "vm1/full/1.ram") || !strings.Contains(logged[0], "offset=1228800") {
		t.Errorf("log: %q", logged)
	}
	if st := srv.Status(); st.Errors == 0 || st.Errors != uint64(len(logged)) {
		t.Errorf("status %+v, %d lines", st, len(logged))
	}
	var ij struct{ Mount MountCounters }
	readJSON(t, filepath.Join(mnt, "vm1", "1.json"), &ij)
	if ij.Mount.Errors == 0 {
		t.Errorf("1.json errors = 0")
	}
	// Still serving.
	if b, err := ddFrame(0); err != nil || !bytes.Equal(b, fx.frame(1, 0)) {
		t.Errorf("after the error: %v", err)
	}
}

// TestRemovedRun: a removed run disappears from a mounted directory.
func TestRemovedRun(t *testing.T) {
	src, _ := memFixture("vm1", 64, 2, 12)
	_, mnt := mountT(t, src, MountOptions{})
	p := filepath.Join(mnt, "vm1", "0.ram")
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	src.remove("vm1")
	deadline := time.Now().Add(3 * time.Second)
	for {
		_, err := os.Stat(p)
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("removed run still visible: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestStaleMount: a daemon killed with SIGKILL leaves a dead mount;
// CheckMountpoint says so clearly and CleanupStale removes it.
func TestStaleMount(t *testing.T) {
	testenv.RequireFUSE(t)
	storeDir := filepath.Join(t.TempDir(), "store")
	st, err := index.Open(storeDir, index.Options{Create: true})
	if err != nil {
		t.Fatal(err)
	}
	fx := newFixture("vm1", 64, 2, 13)
	fx.create(t, st, 2).Close()
	st.Close()
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)

	if err := CheckMountpoint(mnt); err != nil {
		t.Fatalf("fresh mount point: %v", err)
	}
	cmd := childCmd("serve", storeDir, mnt)
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		exec.Command("fusermount3", "-uz", mnt).Run()
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("child said %q", line)
	}
	if _, err := os.Stat(filepath.Join(mnt, "vm1", "0.ram")); err != nil {
		t.Fatal(err)
	}
	if err := CheckMountpoint(mnt); !errors.Is(err, ErrMounted) {
		t.Errorf("live mount: %v, want ErrMounted", err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	err = CheckMountpoint(mnt)
	if !errors.Is(err, ErrStaleMount) || !strings.Contains(err.Error(), mnt) || !strings.Contains(err.Error(), "fusermount3 -uz") {
		t.Fatalf("after SIGKILL: %v", err)
	}
	t.Log(err)
	if _, err := Mount(mnt, newMemSource(), MountOptions{}); !errors.Is(err, ErrStaleMount) {
		t.Errorf("Mount on a stale mount point: %v", err)
	}
	if err := CleanupStale(mnt); err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	if err := CheckMountpoint(mnt); err != nil {
		t.Errorf("after cleanup: %v", err)
	}
	if _, ok := mountedAt(mnt); ok {
		t.Error("still in mountinfo")
	}
}

// TestUnmountBusy: Unmount of a mount in use detaches it lazily and says so.
func TestUnmountBusy(t *testing.T) {
	testenv.RequireFUSE(t)
	src, _ := memFixture("vm1", 64, 2, 14)
	mnt := filepath.Join(t.TempDir(), "mnt")
	os.Mkdir(mnt, 0o755)
	srv, err := Mount(mnt, src, MountOptions{})
	if err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("sh", "-c", "exec 3<"+filepath.Join(mnt, "vm1", "0.ram")+"; echo open; exec sleep 30")
	out, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer holder.Wait()
	defer holder.Process.Kill()
	if line, _ := bufio.NewReader(out).ReadString('\n'); line != "open\n" {
		t.Fatalf("holder: %q", line)
	}
	err = srv.Unmount()
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Unmount while in use: %v", err)
	}
	t.Log(err)
	if _, ok := mountedAt(mnt); ok {
		t.Error("still mounted after a lazy unmount")
	}
	holder.Process.Kill()
	holder.Wait()
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("server still running after its last user left")
	}
}

// TestAllowOther: with AllowOther another user reads every file (FUSE
// allow_other and modes readable by all); without, it reads nothing.
func TestAllowOther(t *testing.T) {
	testenv.RequireRoot(t, "to act as another user")
	setpriv, err := exec.LookPath("setpriv")
	if err != nil {
		t.Skip("no setpriv")
	}
	as := func(args ...string) ([]byte, error) {
		return exec.Command(setpriv, append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, args...)...).CombinedOutput()
	}
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprintf("allow=%v", allow), func(t *testing.T) {
			src, fx := memFixture("vm1", 16, 2, 15)
			_, mnt := mountT(t, src, MountOptions{AllowOther: allow})
			// The mount point's parents are the test's 0700 temporary
			// directories.
			for d := filepath.Dir(mnt); d != os.TempDir(); d = filepath.Dir(d) {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			dir := filepath.Join(mnt, "vm1")
			exp := writeFile(t, t.TempDir(), "full0", fx.images[0])
			if err := os.Chmod(exp, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chmod(filepath.Dir(exp), 0o755)
			opts := mountOptionsOf(t, mnt)
			if strings.Contains(opts, "allow_other") != allow || !strings.Contains(opts, "default_permissions") {
				t.Errorf("mount options %q", opts)
			}
			wantModes := map[string]uint32{"": 0o500, "full": 0o500, "0.ws": 0o400, "0.ram": 0o600, "full/0.ram": 0o600, "run.json": 0o400}
			if allow {
				wantModes = map[string]uint32{"": 0o555, "full": 0o555, "0.ws": 0o444, "0.ram": 0o644, "full/0.ram": 0o644, "run.json": 0o444}
			}
			for p, m := range wantModes {
				if got := statT(t, filepath.Join(dir, p)).Mode & 0o7777; got != m {
					t.Errorf("%s: mode %o, want %o", p, got, m)
				}
			}
			for _, c := range [][]string{
				{"ls", dir},
				{"cat", filepath.Join(dir, "0.ws")},
				{"cat", filepath.Join(dir, "run.json")},
				{"cmp", filepath.Join(dir, "full", "0.ram"), exp},
			} {
				out, err := as(c...)
				if allow && err != nil {
					t.Errorf("%v as another user: %v: %s", c, err, out)
				}
				if !allow && (err == nil || !strings.Contains(string(out), "Permission denied")) {
					t.Errorf("%v as another user without allow_other: %v: %s", c, err, out)
				}
			}
			if allow {
				// Readable, not writable: O_RDWR is the owner's.
				if out, err := as("sh", "-c", "exec 3<>"+filepath.Join(dir, "0.ram")); err == nil || !strings.Contains(string(out), "Permission denied") {
					t.Errorf("O_RDWR as another user: %v: %s", err, out)
				}
			}
		})
	}
}

// TestNoFuseFDInChildren: children of the serving process do not inherit
// /dev/fuse, so they cannot keep a dead daemon's mount alive.
func TestNoFuseFDInChildren(t *testing.T) {
	src, _ := memFixture("vm1", 16, 1, 16)
	mountT(t, src, MountOptions{})
	out := run(t, "sh", "-c", "ls -l /proc/self/fd/")
	if strings.Contains(out, "/dev/fuse") {
		t.Errorf("a child inherits /dev/fuse:\n%s", out)
	}
}

// TestWritesRefused: every operation that would change the tree or a
// file's attributes fails with EROFS, and `rm -rf` removes nothing and
// says so.
func TestWritesRefused(t *testing.T) {
	src, _ := memFixture("vm1", 16, 3, 18)
	_, mnt := mountT(t, src, MountOptions{})
	dir := filepath.Join(mnt, "vm1")
	ram, ws, full := filepath.Join(dir, "1.ram"), filepath.Join(dir, "1.ws"), filepath.Join(dir, "full")
	for _, c := range []struct {
		what string
		err  error
	}{
		{"unlink 1.ram", unix.Unlink(ram)},
		{"unlink 1.ws", unix.Unlink(ws)},
		{"unlink full/0.ram", unix.Unlink(filepath.Join(full, "0.ram"))},
		{"rmdir full", unix.Rmdir(full)},
		{"rmdir run", unix.Rmdir(dir)},
		{"rename 1.ram", unix.Rename(ram, filepath.Join(dir, "x.ram"))},
		{"rename run", unix.Rename(dir, filepath.Join(mnt, "vm2"))},
		{"mkdir", unix.Mkdir(filepath.Join(dir, "d"), 0o700)},
		{"mkdir in root", unix.Mkdir(filepath.Join(mnt, "vm2"), 0o700)},
		{"mknod", unix.Mknod(filepath.Join(dir, "fifo"), unix.S_IFIFO|0o600, 0)},
		{"create", func() error { _, err := os.Create(filepath.Join(full, "9.ram")); return err }()},
		{"symlink", unix.Symlink("1.ram", filepath.Join(dir, "l"))},
		{"link", unix.Link(ram, filepath.Join(dir, "h"))},
		{"truncate", unix.Truncate(ws, 0)},
		{"chmod file", unix.Chmod(ram, 0o666)},
		{"chmod dir", unix.Chmod(dir, 0o777)},
		{"chown", unix.Chown(ws, 1, 1)},
		{"utimes", unix.UtimesNano(ram, []unix.Timespec{{}, {}})},
		{"setxattr", unix.Setxattr(ram, "user.x", []byte("1"), 0)},
		{"setxattr dir", unix.Setxattr(dir, "user.x", []byte("1"), 0)},
		{"removexattr", unix.Removexattr(ram, "user.ckptfs.run")},
	} {
		if !errors.Is(c.err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", c.what, c.err)
		}
	}
	before := run(t, "find", dir)
	out, err := exec.Command("rm", "-rf", dir).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Read-only file system") {
		t.Errorf("rm -rf %s: %v: %s", dir, err, out)
	}
	if after := run(t, "find", dir); after != before {
		t.Errorf("rm -rf changed the tree:\n%s\nwas\n%s", after, before)
	}
	if _, err := os.Stat(ram); err != nil {
		t.Error(err)
	}
}

// TestCheckMountpointNotEmpty: a directory with entries is refused.
func TestCheckMountpointNotEmpty(t *testing.T) {
	dir := t.TempDir()
	if err := CheckMountpoint(dir); err != nil {
		t.Fatalf("empty directory: %v", err)
	}
	writeFile(t, dir, ".hidden", nil)
	if err := CheckMountpoint(dir); !errors.Is(err, ErrNotEmpty) || !strings.Contains(err.Error(), ".hidden") {
		t.Errorf("directory with a file: %v", err)
	}
}

// TestSharedWritableMap: a writable shared mapping is refused, so that no
// writer can change what later readers of a checkpoint see (dirty pages
// whose write-back fails would stay in the page cache), while a private
// writable mapping of an O_RDWR descriptor, as QEMU's share=off makes it,
// still works and stays private.
func TestSharedWritableMap(t *testing.T) {
	src, fx := memFixture("vm1", 256, 3, 17)
	_, mnt := mountT(t, src, MountOptions{})
	dir := filepath.Join(mnt, "vm1")
	tmp := t.TempDir()
	ws := fx.ws[1]
	data := uint64(ws.Minimum())
	hole := uint64(0)
	for ws.Contains(uint32(hole)) {
		hole++
	}
	for _, c := range []struct {
		file string
		want []byte
	}{
		{filepath.Join(dir, "1.ram"), fx.sparseImage(1)},
		{filepath.Join(dir, "full", "1.ram"), fx.images[1]},
	} {
		exp := writeFile(t, tmp, strings.ReplaceAll(strings.TrimPrefix(c.file, mnt), "/", "_"), c.want)
		run(t, "cmp", c.file, exp) // cached before the writer comes
		var res sharedWriteResult
		out := runChild(t, "sharedwrite", c.file, strconv.FormatUint(data*pageSize, 10), strconv.FormatUint(hole*pageSize+100, 10))
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatal(err)
		}
		if res.Open != "ok" || res.Mmap == "ok" {
			t.Errorf("%s: a shared writable mapping of an O_RDWR descriptor: %+v, want open ok and mmap refused", c.file, res)
		}
		// A new reader (read(2)) and a new private mapping in
		// another process see the checkpoint, holes still zeros.
		if out, err := exec.Command("cmp", c.file, exp).CombinedOutput(); err != nil {
			t.Errorf("%s reads differently after the shared writer: %s", c.file, out)
		}
		if out, err := childCmd("cmpmap", c.file, exp).CombinedOutput(); err != nil {
			t.Errorf("%s maps differently after the shared writer: %s", c.file, out)
		}
		// QEMU's share=off: O_RDWR, MAP_PRIVATE, PROT_WRITE.
		var pw privWriteResult
		if err := json.Unmarshal([]byte(runChild(t, "privwrite", c.file)), &pw); err != nil {
			t.Fatal(err)
		}
		if pw.OpenRDWR != "ok" || pw.WriteErrno != syscall.EROFS.Error() || !pw.Private || !bytes.Equal(pw.Before, c.want[:16]) {
			t.Errorf("%s: private writable mapping: %+v", c.file, pw)
		}
		run(t, "cmp", c.file, exp)
		if out, err := childCmd("cmpmap", c.file, exp).CombinedOutput(); err != nil {
			t.Errorf("%s maps differently after the private writer: %s", c.file, out)
		}
	}
}

// TestMappedMisses: a fault on a hole of <i>.ram is one miss frame, not a
// readahead window of them, whether the file is mapped from a read-only
// descriptor or, as QEMU before 8.2 maps it, from an O_RDWR one (which has
// direct I/O, see ramFile.Open): the kernel's readahead around the fault
// is refused in both cases, while a read(2) of the O_RDWR descriptor over
// holes is served.
func TestMappedMisses(t *testing.T) {
	src, fx := memFixture("vm1", 8192, 3, 19) // 32 MiB
	srv, mnt := mountT(t, src, MountOptions{Prefetch: "none"})
	file := filepath.Join(mnt, "vm1", "1.ram")
	ws := fx.ws[1]
	// Holes 1 MiB and more apart, each inside a run of holes.
	var holes []string
	for p := uint64(128); p+128 < fx.frames && len(holes) < 8; p += 512 {
		q := p
		for q < p+256 && (ws.Contains(uint32(q)) || ws.Contains(uint32(q-1)) || ws.Contains(uint32(q+1))) {
			q++
		}
		if q < p+256 {
			holes = append(holes, strconv.FormatUint(q, 10))
		}
	}
	if len(holes) < 4 {
		t.Fatalf("fixture has too few holes: %v", holes)
	}
	missFrames := func() uint64 {
		var st struct{ Mount MountCounters }
		readJSON(t, filepath.Join(mnt, "vm1", "1.json"), &st)
		return st.Mount.MissFrames
	}
	var pfns []uint32
	for _, h := range holes {
		p, _ := strconv.Atoi(h)
		pfns = append(pfns, uint32(p))
	}
	list := writeFile(t, t.TempDir(), "pfns", pfnBytes(pfns))
	for _, c := range []struct {
		what string
		args []string
	}{
		{"touch", []string{file, list}},               // O_RDONLY, MAP_PRIVATE
		{"touchrw", append([]string{file}, holes...)}, // O_RDWR, MAP_PRIVATE, PROT_WRITE
	} {
		srv.evict("vm1", "1.ram")
		before := missFrames()
		runChild(t, c.what, c.args...)
		if got := missFrames() - before; got != uint64(len(holes)) {
			t.Errorf("%s: touching %d holes counted %d miss frames", c.what, len(holes), got)
		}
	}
	// read(2) of an O_RDWR descriptor goes straight to the mount (direct
	// I/O): several frames over holes are served, not refused.
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	want := fx.sparseImage(1)
	for _, off := range []int64{0, 5 << 20, int64(len(want)) - 1<<20} {
		n, err := f.ReadAt(buf, off)
		if err != nil || n != len(buf) || !bytes.Equal(buf, want[off:off+int64(n)]) {
			t.Errorf("read of 1 MiB at %d of an O_RDWR descriptor: %d bytes, %v, equal %v", off, n, err, bytes.Equal(buf[:n], want[off:off+int64(n)]))
		}
	}
}
