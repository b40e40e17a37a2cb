package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"time"

	"github.com/ckptfs/ckptfs/index"
	"github.com/ckptfs/ckptfs/internal/storeapi"
	"github.com/ckptfs/ckptfs/kvmrec"
	"github.com/prometheus/client_golang/prometheus"
)

// recordJob is one recording: what the record command's flags ask for, or
// a storeapi.RecordRequest a client sent to the store's owner.
type recordJob struct {
	cfg           kvmrec.Config // without Logger, OnCheckpoint and Registerer
	deterministic bool
	qemu          string
	machineArgs   []string
	plugin        string
	noPack        bool
}

// recordReporter is where a recording's news goes: the terminal of the
// user who records, here or through the socket.
type recordReporter interface {
	logger() *slog.Logger
	checkpoint(kvmrec.CheckpointStats)
	recorded(kvmrec.Summary)
	packed(run string, ps storeapi.PackResult)
	notPacked(run string) // stopped before packing
}

// runRecording records job into st, then packs what it committed (unless
// noPack), also after a failure: what was committed is served, and
// deserves its packs.
func runRecording(ctx context.Context, st *index.Store, job recordJob, reg prometheus.Registerer, rep recordReporter) error {
	cfg := job.cfg
	cfg.Logger = rep.logger()
	cfg.OnCheckpoint = rep.checkpoint
	cfg.Registerer = reg
	var sum kvmrec.Summary
	var err error
	if job.deterministic {
		sum, err = kvmrec.RecordDeterministic(ctx, st, kvmrec.DeterministicConfig{
			Config: cfg, QEMU: job.qemu, MachineArgs: job.machineArgs, Plugin: job.plugin})
	} else {
		sum, err = kvmrec.Record(ctx, st, cfg)
	}
	if sum.Checkpoints > 0 {
		rep.recorded(sum)
	}
	if sum.Checkpoints > 1 && !job.noPack {
		if ctx.Err() != nil {
			// Stopped by Ctrl-C: the checkpoints are what the user waited for.
			rep.notPacked(sum.Run)
			return err
		}
		ps, perr := localStore{st}.Pack(ctx, sum.Run)
		if perr != nil {
			perr = fmt.Errorf("%w (every checkpoint of %s is committed; `ckptfs pack %s` finishes the packs)", perr, sum.Run, sum.Run)
		} else {
			rep.packed(sum.Run, ps)
		}
		if err == nil {
			err = perr
		}
	}
	return err
}

// cliReporter prints a recording's news as the record command does.
type cliReporter struct {
	stdout, stderr io.Writer
	log            *slog.Logger
}

func (r cliReporter) logger() *slog.Logger { return r.log }

func (r cliReporter) checkpoint(s kvmrec.CheckpointStats) {
	fmt.Fprintln(r.stderr, formatCheckpoint(s))
}

func (r cliReporter) recorded(sum kvmrec.Summary) {
	fmt.Fprintf(r.stdout, "recorded %s: %d checkpoints of %s in %s (%s); downtime median %s, p99 %s; %s stored\n",
		sum.Run, sum.Checkpoints, humanBytes(sum.RAMSize), sum.Elapsed.Round(time.Millisecond), sum.Stopped,
		sum.MedianDowntime.Round(10*time.Microsecond), sum.P99Downtime.Round(10*time.Microsecond), humanBytes(sum.BytesStored))
}

func (r cliReporter) packed(run string, ps storeapi.PackResult) { printPacked(r.stdout, run, ps) }

func (r cliReporter) notPacked(run string) { printNotPacked(r.stderr, run) }

// eventReporter sends a recording's news to the client as events.
type eventReporter struct {
	ev  *eventWriter
	log *slog.Logger
}

func (r eventReporter) logger() *slog.Logger { return r.log }

func (r eventReporter) checkpoint(s kvmrec.CheckpointStats) {
	r.ev.send(storeapi.Event{Checkpoint: &storeapi.CheckpointRecord{Checkpoint: s.Checkpoint, ChangedFrames: s.ChangedFrames,
		DowntimeNS: int64(s.Downtime), VMDowntimeNS: int64(s.VMDowntime), PrecopyNS: int64(s.Phases.Precopy)}})
}

func (r eventReporter) recorded(sum kvmrec.Summary) {
	r.ev.send(storeapi.Event{Recorded: &storeapi.RecordSummary{Run: sum.Run, RAMSize: sum.RAMSize, Checkpoints: sum.Checkpoints,
		Stopped: sum.Stopped, ElapsedNS: int64(sum.Elapsed), MedianDowntimeNS: int64(sum.MedianDowntime),
		P99DowntimeNS: int64(sum.P99Downtime), BytesStored: sum.BytesStored}})
}

// packed is the stream's result; runRecording's caller sends it.
func (r eventReporter) packed(string, storeapi.PackResult) {}

func (r eventReporter) notPacked(run string) {
	r.log.Warn("working sets not packed; `ckptfs pack " + run + "` builds the packs")
}

// logHandler turns the recorder's log records into Log events.
type logHandler struct {
	ev    *eventWriter
	level slog.Level
	attrs []slog.Attr
}

func (h logHandler) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h logHandler) Handle(_ context.Context, rec slog.Record) error {
	lr := &storeapi.LogRecord{Time: rec.Time, Level: rec.Level.String(), Message: rec.Message}
	add := func(a slog.Attr) bool {
		if lr.Attrs == nil {
			lr.Attrs = map[string]string{}
		}
		lr.Attrs[a.Key] = a.Value.String()
		return true
	}
	for _, a := range h.attrs {
		add(a)
	}
	rec.Attrs(add)
	h.ev.send(storeapi.Event{Log: lr})
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	h.attrs = append(append([]slog.Attr(nil), h.attrs...), as...)
	return h
}

// WithGroup is not needed by the recorder: groups are flattened.
func (h logHandler) WithGroup(string) slog.Handler { return h }

// recordRequest is job on the wire.
func recordRequest(job recordJob, logLevel string) storeapi.RecordRequest {
	c := job.cfg
	return storeapi.RecordRequest{QMP: c.QMPSocket, Mem: c.MemPath, IntervalNS: int64(c.Interval), Count: c.Count,
		DurationNS: int64(c.Duration), Tracker: c.Tracker, DeviceState: c.DeviceState, ExactWS: c.ExactWorkingSets,
		NoPrecopy: c.NoPrecopy, NoPack: job.noPack, PackLive: c.PackLive, Deterministic: job.deterministic,
		QEMU: job.qemu, WSPlugin: job.plugin, MachineArgs: job.machineArgs, LogLevel: logLevel}
}

// jobFromRequest is the job a client asked for; kvmrec checks the rest.
func jobFromRequest(run string, req storeapi.RecordRequest) (recordJob, slog.Level, error) {
	var lvl slog.Level
	if req.LogLevel != "" {
		if err := lvl.UnmarshalText([]byte(req.LogLevel)); err != nil {
			return recordJob{}, 0, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: "record: log_level: " + err.Error()}
		}
	}
	if req.IntervalNS <= 0 {
		return recordJob{}, 0, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: "record: interval_ns must be positive"}
	}
	tracker := req.Tracker
	if tracker == "" {
		tracker = kvmrec.TrackerPagemap
	}
	if tracker != kvmrec.TrackerPagemap && tracker != kvmrec.TrackerHash {
		return recordJob{}, 0, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: fmt.Sprintf("record: tracker %q: want pagemap or hash", tracker)}
	}
	if req.Deterministic != (len(req.MachineArgs) > 0) {
		return recordJob{}, 0, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: "record: machine_args go with deterministic, and only with it"}
	}
	return recordJob{
		cfg: kvmrec.Config{Run: run, QMPSocket: req.QMP, MemPath: req.Mem, Interval: time.Duration(req.IntervalNS),
			Count: req.Count, Duration: time.Duration(req.DurationNS), Tracker: tracker, DeviceState: req.DeviceState,
			ExactWorkingSets: req.ExactWS, NoPrecopy: req.NoPrecopy, PackLive: req.PackLive && !req.NoPack},
		deterministic: req.Deterministic, qemu: req.QEMU, machineArgs: req.MachineArgs, plugin: req.WSPlugin, noPack: req.NoPack,
	}, lvl, nil
}

// serveRecord records a VM into the owner's store for a client and streams
// the recording's news back.
func serveRecord(w http.ResponseWriter, r *http.Request, st *index.Store) {
	var req storeapi.RecordRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeJSON(w, nil, &storeapi.Error{Code: storeapi.CodeBadRequest, Message: "record request: " + err.Error()})
		return
	}
	job, lvl, err := jobFromRequest(r.PathValue("run"), req)
	if err != nil {
		writeJSON(w, nil, err)
		return
	}
	streamEvents(w, r, func(ev *eventWriter) (any, error) {
		rep := eventReporter{ev: ev, log: slog.New(logHandler{ev: ev, level: lvl})}
		var ps storeapi.PackResult
		err := runRecording(r.Context(), st, job, nil, packCatcher{rep, &ps})
		if errors.Is(err, kvmrec.ErrBadConfig) {
			err = &storeapi.Error{Code: storeapi.CodeBadRequest, Message: storeapi.OneLine(err.Error())}
		}
		return ps, err
	})
}

// packCatcher keeps the packs a recording built, for the stream's result.
type packCatcher struct {
	recordReporter
	ps *storeapi.PackResult
}

func (p packCatcher) packed(_ string, ps storeapi.PackResult) { *p.ps = ps }

// recordThroughOwner sends job to the process that owns the store in dir
// and prints the recording's news as a recording here would.
func recordThroughOwner(ctx context.Context, dir string, busy error, job recordJob, logLevel string, rep cliReporter) error {
	return withOwner(ctx, dir, busy, func(cl *storeapi.Client) error {
		logh := rep.log.Handler()
		ps, err := cl.Record(ctx, job.cfg.Run, recordRequest(job, logLevel), func(ev storeapi.Event) {
			switch {
			case ev.Log != nil:
				var lvl slog.Level
				_ = lvl.UnmarshalText([]byte(ev.Log.Level))
				rec := slog.NewRecord(ev.Log.Time, lvl, ev.Log.Message, 0)
				for k, v := range ev.Log.Attrs {
					rec.AddAttrs(slog.String(k, v))
				}
				if logh.Enabled(ctx, lvl) {
					_ = logh.Handle(ctx, rec)
				}
			case ev.Checkpoint != nil:
				cp := ev.Checkpoint
				s := kvmrec.CheckpointStats{Downtime: time.Duration(cp.DowntimeNS), VMDowntime: time.Duration(cp.VMDowntimeNS)}
				s.Checkpoint, s.ChangedFrames, s.Phases.Precopy = cp.Checkpoint, cp.ChangedFrames, time.Duration(cp.PrecopyNS)
				rep.checkpoint(s)
			case ev.Recorded != nil:
				rs := ev.Recorded
				rep.recorded(kvmrec.Summary{Run: rs.Run, RAMSize: rs.RAMSize, Checkpoints: rs.Checkpoints, Stopped: rs.Stopped,
					Elapsed: time.Duration(rs.ElapsedNS), MedianDowntime: time.Duration(rs.MedianDowntimeNS),
					P99Downtime: time.Duration(rs.P99DowntimeNS), BytesStored: rs.BytesStored})
			}
		})
		if err == nil {
			rep.packed(job.cfg.Run, ps)
		}
		return err
	})
}
