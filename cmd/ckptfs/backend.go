package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/storeapi"
)

// storeBackend is what the store commands do with a store: one this
// process opened (localStore), or one another process owns, through its
// socket (remoteStore). The socket's handlers call a localStore too, so
// both paths run the same code.
type storeBackend interface {
	Runs(ctx context.Context) ([]index.RunInfo, error)
	Run(ctx context.Context, run string) (index.RunInfo, error)
	// Intervals returns the stats of every checkpoint of run.
	Intervals(ctx context.Context, run string) ([]index.IntervalStats, error)
	Interval(ctx context.Context, run string, i int) (index.IntervalStats, error)
	Verify(ctx context.Context, run string, progress index.Progress) (index.VerifyReport, error)
	DeleteRun(ctx context.Context, run string) error
	Pack(ctx context.Context, run string) (storeapi.PackResult, error)
	Import(ctx context.Context, spec index.ImportSpec) (index.RunInfo, error)
	Export(ctx context.Context, spec index.ExportSpec) error
}

type localStore struct{ st *index.Store }

var _ storeBackend = localStore{}

func (l localStore) Runs(context.Context) ([]index.RunInfo, error) { return l.st.Runs() }

func (l localStore) Run(_ context.Context, run string) (index.RunInfo, error) { return l.st.Run(run) }

func (l localStore) Intervals(_ context.Context, run string) ([]index.IntervalStats, error) {
	ri, err := l.st.Run(run)
	if err != nil {
		return nil, err
	}
	out := make([]index.IntervalStats, 0, ri.Checkpoints)
	for i := 0; i < ri.Checkpoints; i++ {
		is, err := l.st.IntervalStats(ri.Name, i)
		if err != nil {
			return nil, err
		}
		out = append(out, is)
	}
	return out, nil
}

func (l localStore) Interval(_ context.Context, run string, i int) (index.IntervalStats, error) {
	return l.st.IntervalStats(run, i)
}

func (l localStore) Verify(ctx context.Context, run string, progress index.Progress) (index.VerifyReport, error) {
	return l.st.Verify(ctx, run, progress)
}

func (l localStore) DeleteRun(_ context.Context, run string) error { return l.st.DeleteRun(run) }

func (l localStore) Pack(ctx context.Context, run string) (storeapi.PackResult, error) {
	start := time.Now()
	ps, err := l.st.PackRun(ctx, run)
	return storeapi.PackResult{PackStats: ps, Seconds: time.Since(start).Seconds()}, err
}

func (l localStore) Import(ctx context.Context, spec index.ImportSpec) (index.RunInfo, error) {
	return l.st.Import(ctx, spec)
}

func (l localStore) Export(ctx context.Context, spec index.ExportSpec) error {
	return l.st.Export(ctx, spec)
}

// remoteStore is the store of another process, through its socket. Paths
// in specs are this process's: it reads the dumps and writes the exports.
type remoteStore struct{ *storeapi.Client }

var _ storeBackend = remoteStore{}

// Import checks the dumps and working sets here, as a local import would,
// then streams them to the owner.
func (r remoteStore) Import(ctx context.Context, spec index.ImportSpec) (index.RunInfo, error) {
	size, err := index.CheckDumps(spec.Dumps)
	if err != nil {
		return index.RunInfo{}, err
	}
	h := storeapi.ImportHeader{RAMSize: uint64(size), Dumps: len(spec.Dumps)}
	if spec.WSDir != "" {
		wss, err := index.ReadWorkingSets(spec.WSDir, len(spec.Dumps)-1, uint64(size)/index.PageSize)
		if err != nil {
			return index.RunInfo{}, err
		}
		h.WorkingSets = make([]string, len(wss))
		for i, ws := range wss {
			h.WorkingSets[i] = index.FormatList(ws)
		}
	}
	return r.Client.Import(ctx, spec.Run, func(w io.Writer) error {
		if err := storeapi.WriteImportHeader(w, h); err != nil {
			return err
		}
		for _, d := range spec.Dumps {
			if err := copyDump(w, d, size); err != nil {
				return err
			}
		}
		return nil
	}, spec.Progress)
}

// copyDump writes dump d, which must still have size bytes.
func copyDump(w io.Writer, d string, size int64) error {
	f, err := os.Open(d)
	if err != nil {
		return fmt.Errorf("%w: %v", index.ErrBadInput, err)
	}
	defer f.Close()
	n, err := io.Copy(w, io.LimitReader(f, size))
	if err == nil && n != size {
		err = fmt.Errorf("%w: dump %s changed size while reading (%d bytes read, %d expected)", index.ErrBadInput, d, n, size)
	}
	return err
}

// Export writes the owner's export stream into spec.Out as a local export
// would: a regular file gets the RAM size with holes, and is removed when
// the export fails.
func (r remoteStore) Export(ctx context.Context, spec index.ExportSpec) error {
	f, err := os.OpenFile(spec.Out, os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("%w: %v", index.ErrBadInput, err)
	}
	fi, err := f.Stat()
	regular := err == nil && fi.Mode().IsRegular()
	if regular {
		err = f.Truncate(0)
	}
	var size uint64
	if err == nil {
		size, err = r.Client.Export(ctx, spec.Run, spec.Interval, spec.Sparse, f)
	}
	if err == nil && regular {
		err = f.Truncate(int64(size))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil && regular {
		os.Remove(spec.Out)
	}
	return err
}
