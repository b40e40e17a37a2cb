package fs

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ckptfs/ckptfs/index"
)

// childMain runs a child mode; its exit code is the child's.
func childMain(mode string, args []string) int {
	var err error
	switch mode {
	case "cmpmap":
		err = childCmpMap(args[0], args[1])
	case "privwrite":
		err = childPrivWrite(args[0])
	case "sharedwrite":
		err = childSharedWrite(args[0], args[1:])
	case "touch":
		err = childTouch(args)
	case "touchrw":
		err = childTouchRW(args[0], args[1:])
	case "fill":
		err = childFill(args[0])
	case "serve":
		err = childServe(args[0], args[1])
	default:
		err = fmt.Errorf("unknown child mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, mode+":", err)
		return 1
	}
	return 0
}

func mmapFile(path string, flags int, prot int) ([]byte, *os.File, error) {
	f, err := os.OpenFile(path, flags, 0)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if st.Size() == 0 {
		return nil, f, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), prot, unix.MAP_PRIVATE)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return m, f, nil
}

// childCmpMap maps file privately and compares every page with expected.
func childCmpMap(file, expected string) error {
	want, err := os.ReadFile(expected)
	if err != nil {
		return err
	}
	m, f, err := mmapFile(file, os.O_RDONLY, unix.PROT_READ)
	if err != nil {
		return err
	}
	defer f.Close()
	defer unix.Munmap(m)
	if len(m) != len(want) {
		return fmt.Errorf("%s has %d bytes, want %d", file, len(m), len(want))
	}
	for off := 0; off < len(m); off += pageSize {
		if !bytes.Equal(m[off:off+pageSize], want[off:off+pageSize]) {
			return fmt.Errorf("%s: frame %d differs", file, off/pageSize)
		}
	}
	fmt.Println("ok")
	return nil
}

// privWriteResult is what childPrivWrite reports.
type privWriteResult struct {
	OpenRDWR   string `json:"open_rdwr"`
	WriteErrno string `json:"write_errno"`
	Private    bool   `json:"private"`
	Before     []byte `json:"before"`
}

// childPrivWrite opens file O_RDWR, checks that write(2) fails, maps it
// privately and writes to the mapping.
func childPrivWrite(file string) error {
	var res privWriteResult
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		res.OpenRDWR = err.Error()
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	res.OpenRDWR = "ok"
	if _, err := unix.Pwrite(int(f.Fd()), []byte("x"), 0); err != nil {
		res.WriteErrno = err.(syscall.Errno).Error()
	} else {
		res.WriteErrno = "none"
	}
	st, err := f.Stat()
	if err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
	if err != nil {
		return fmt.Errorf("mmap: %w", err)
	}
	res.Before = bytes.Clone(m[:16])
	last := len(m) - pageSize
	for _, off := range []int{0, pageSize, last} {
		copy(m[off:], "private write!")
	}
	res.Private = bytes.Equal(m[last:last+14], []byte("private write!")) && bytes.Equal(m[:14], []byte("private write!"))
	if err := unix.Munmap(m); err != nil {
		return err
	}
	f.Close()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// sharedWriteResult is what childSharedWrite reports: the error of each
// step, or "ok".
type sharedWriteResult struct {
	Open  string `json:"open"`
	Mmap  string `json:"mmap"`
	Msync string `json:"msync"`
}

// childSharedWrite opens file O_RDWR, maps it shared and writable, writes
// "shared write!" at every offset given and msyncs the mapping.
func childSharedWrite(file string, offsets []string) error {
	res := sharedWriteResult{Open: "ok", Mmap: "ok", Msync: "ok"}
	f, err := os.OpenFile(file, os.O_RDWR, 0)
	if err != nil {
		res.Open = err.Error()
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		res.Mmap = err.Error()
		return json.NewEncoder(os.Stdout).Encode(res)
	}
	for _, o := range offsets {
		off, err := strconv.Atoi(o)
		if err != nil {
			return err
		}
		copy(m[off:], "shared write!")
	}
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		res.Msync = err.Error()
	}
	if err := unix.Munmap(m); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// touchResult is what childTouch reports.
type touchResult struct {
	Total time.Duration   `json:"total"`
	Lat   []time.Duration `json:"lat,omitempty"`
	Sum   uint64          `json:"sum"`
}

// childTouch opens file, maps it privately and reads one byte of every
// frame listed in the pfn file (little-endian uint32s), in order. With
// "lat" it times every touch. The total includes open and mmap, so a
// mount's prefetch on open is part of it.
func childTouch(args []string) error {
	file, list := args[0], args[1]
	withLat := len(args) > 2 && args[2] == "lat"
	raw, err := os.ReadFile(list)
	if err != nil {
		return err
	}
	pfns := make([]uint32, len(raw)/4)
	for i := range pfns {
		pfns[i] = binary.LittleEndian.Uint32(raw[4*i:])
	}
	var res touchResult
	if withLat {
		res.Lat = make([]time.Duration, 0, len(pfns))
	}
	start := time.Now()
	m, f, err := mmapFile(file, os.O_RDONLY, unix.PROT_READ)
	if err != nil {
		return err
	}
	var sum uint64
	for _, p := range pfns {
		if withLat {
			t0 := time.Now()
			sum += uint64(m[uint64(p)*pageSize+8])
			res.Lat = append(res.Lat, time.Since(t0))
		} else {
			sum += uint64(m[uint64(p)*pageSize+8])
		}
	}
	res.Total = time.Since(start)
	res.Sum = sum
	unix.Munmap(m)
	f.Close()
	return json.NewEncoder(os.Stdout).Encode(res)
}

// childTouchRW maps file as QEMU's share=off does (O_RDWR, MAP_PRIVATE,
// PROT_READ|PROT_WRITE) and reads one byte of every frame given.
func childTouchRW(file string, pfns []string) error {
	m, f, err := mmapFile(file, os.O_RDWR, unix.PROT_READ|unix.PROT_WRITE)
	if err != nil {
		return err
	}
	defer f.Close()
	defer unix.Munmap(m)
	var sum int
	for _, s := range pfns {
		p, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		sum += int(m[p*pageSize+8])
	}
	fmt.Println(sum)
	return nil
}

// childFill is the floor of filling any cache with the frames listed in
// the pfn file: it populates fresh anonymous memory of that many frames and
// copies a frame into each, with no file involved, and reports the time
// like childTouch.
func childFill(list string) error {
	raw, err := os.ReadFile(list)
	if err != nil {
		return err
	}
	n := len(raw) / 4
	src := make([]byte, pageSize)
	for i := range src {
		src[i] = byte(i)
	}
	start := time.Now()
	m, err := unix.Mmap(-1, 0, n*pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return err
	}
	_ = unix.Madvise(m, unix.MADV_NOHUGEPAGE)
	_ = unix.Madvise(m, unix.MADV_POPULATE_WRITE)
	for off := 0; off < len(m); off += pageSize {
		copy(m[off:off+pageSize], src)
	}
	res := touchResult{Total: time.Since(start), Sum: uint64(m[len(m)-1])}
	unix.Munmap(m)
	return json.NewEncoder(os.Stdout).Encode(res)
}

// childServe mounts the store at mnt, says "ready" and serves until killed.
func childServe(store, mnt string) error {
	st, err := index.Open(store, index.Options{})
	if err != nil {
		return err
	}
	srv, err := Mount(mnt, FromIndex(st), MountOptions{})
	if err != nil {
		return err
	}
	fmt.Println("ready")
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
	srv.Unmount()
	return st.Close()
}

// pfnFile writes pfns as little-endian uint32s.
func pfnBytes(pfns []uint32) []byte {
	b := make([]byte, 4*len(pfns))
	for i, p := range pfns {
		binary.LittleEndian.PutUint32(b[4*i:], p)
	}
	return b
}

var _ = strconv.Itoa
