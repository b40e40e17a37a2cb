package storeapi

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/index"
)

// ErrConnectionLost means the server went away in the middle of a request:
// it exited or closed the connection, and the request may or may not have
// taken effect.
var ErrConnectionLost = errors.New("storeapi: the server closed the connection during the request")

// Client calls the store API of one server.
type Client struct {
	base string // "http://host", no trailing slash
	hc   *http.Client
}

// New returns a client for the server at base (e.g. "http://host:port")
// that sends its requests with hc.
func New(base string, hc *http.Client) *Client {
	return &Client{base: strings.TrimSuffix(base, "/"), hc: hc}
}

// NewUnix returns a client whose every connection goes to the unix socket
// at path.
func NewUnix(path string) *Client {
	return New("http://ckptfs", &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		// An import waits for the server's go before it sends its dumps.
		ExpectContinueTimeout: 10 * time.Second,
	}})
}

// Status asks who owns the store.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	return st, c.getJSON(ctx, "/status", &st)
}

// Runs lists the runs.
func (c *Client) Runs(ctx context.Context) ([]index.RunInfo, error) {
	var runs []index.RunInfo
	return runs, c.getJSON(ctx, "/runs", &runs)
}

// Run describes one run.
func (c *Client) Run(ctx context.Context, run string) (index.RunInfo, error) {
	var ri index.RunInfo
	return ri, c.getJSON(ctx, runPath(run), &ri)
}

// Intervals returns the stats of every checkpoint of run.
func (c *Client) Intervals(ctx context.Context, run string) ([]index.IntervalStats, error) {
	var is []index.IntervalStats
	return is, c.getJSON(ctx, runPath(run)+"/intervals", &is)
}

// Interval returns the stats of interval i of run.
func (c *Client) Interval(ctx context.Context, run string, i int) (index.IntervalStats, error) {
	var is index.IntervalStats
	return is, c.getJSON(ctx, runPath(run)+"/intervals/"+strconv.Itoa(i), &is)
}

// DeleteRun removes run.
func (c *Client) DeleteRun(ctx context.Context, run string) error {
	return c.do(ctx, http.MethodDelete, runPath(run))
}

// DropCaches empties the server's block cache.
func (c *Client) DropCaches(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/drop-caches")
}

// Verify checks run, or the whole store when run is "". A report with
// problems comes with an error of code CodeCorrupt.
func (c *Client) Verify(ctx context.Context, run string, progress index.Progress) (index.VerifyReport, error) {
	path := "/verify"
	if run != "" {
		path = runPath(run) + "/verify"
	}
	var rep index.VerifyReport
	return rep, c.stream(ctx, http.MethodPost, path, "", nil, progressOnly(progress), &rep)
}

// Pack builds the missing working-set packs of run.
func (c *Client) Pack(ctx context.Context, run string) (PackResult, error) {
	var res PackResult
	return res, c.stream(ctx, http.MethodPost, runPath(run)+"/pack", "", nil, nil, &res)
}

// Import sends an import body (importfmt.go) that body writes, and imports
// it as the new run.
func (c *Client) Import(ctx context.Context, run string, body func(w io.Writer) error, progress index.Progress) (index.RunInfo, error) {
	pr, pw := io.Pipe()
	bodyErr := make(chan error, 1)
	go func() {
		err := body(pw)
		bodyErr <- err
		pw.CloseWithError(err)
	}()
	var ri index.RunInfo
	err := c.stream(ctx, http.MethodPost, runPath(run)+"/import", ContentImport, pr, progressOnly(progress), &ri)
	pr.Close()
	if berr := <-bodyErr; berr != nil && err != nil && !errors.Is(berr, io.ErrClosedPipe) {
		// The server's answer to a cut-off body says less than why the
		// body was cut off.
		return ri, berr
	}
	return ri, err
}

// Export writes checkpoint i of run to w (holes are not written) and
// returns the image's size. sparse exports W_i only.
func (c *Client) Export(ctx context.Context, run string, i int, sparse bool, w io.WriterAt) (uint64, error) {
	path := runPath(run) + "/checkpoints/" + strconv.Itoa(i) + "/image"
	if sparse {
		path += "?sparse=true"
	}
	resp, err := c.call(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	size, err := ReadExtents(resp.Body, w)
	return size, lost(err)
}

// Record asks the server to record a VM into the new run; events gets the
// stream's log, checkpoint and summary events.
func (c *Client) Record(ctx context.Context, run string, req RecordRequest, events func(Event)) (PackResult, error) {
	data, err := json.Marshal(req)
	if err != nil {
		return PackResult{}, err
	}
	var res PackResult
	return res, c.stream(ctx, http.MethodPost, runPath(run)+"/record", "application/json", bytes.NewReader(data), events, &res)
}

func runPath(run string) string { return "/runs/" + url.PathEscape(run) }

func progressOnly(p index.Progress) func(Event) {
	return func(ev Event) {
		if p != nil && ev.Progress != nil {
			p(ev.Progress.Done, ev.Progress.Total)
		}
	}
}

// do sends a request whose answer has no body of interest.
func (c *Client) do(ctx context.Context, method, path string) error {
	resp, err := c.call(ctx, method, path, "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	return nil
}

func (c *Client) getJSON(ctx context.Context, path string, v any) error {
	resp, err := c.call(ctx, http.MethodGet, path, "", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		if l := lost(err); l == ErrConnectionLost {
			return l
		}
		return fmt.Errorf("storeapi: bad answer to GET %s: %v", path, err)
	}
	return nil
}

// stream sends a request whose answer is Events, passes all but the last
// to events and decodes the last one's Result into v.
func (c *Client) stream(ctx context.Context, method, path, ctype string, body io.Reader, events func(Event), v any) error {
	resp, err := c.call(ctx, method, path, ctype, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var ev Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("storeapi: bad event from %s %s: %v", method, path, err)
		}
		switch {
		case ev.Error != nil:
			return ev.Error
		case ev.Result != nil:
			if err := json.Unmarshal(ev.Result, v); err != nil {
				return fmt.Errorf("storeapi: bad result from %s %s: %v", method, path, err)
			}
			return nil
		case events != nil:
			events(ev)
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := lost(sc.Err()); err != nil {
		return err
	}
	return ErrConnectionLost
}

// call sends a request and returns a 200 response; any other status
// becomes the *Error of its body.
func (c *Client) call(ctx context.Context, method, path, ctype string, body io.Reader) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, method, c.base+"/"+Version+path, body)
	if err != nil {
		return nil, err
	}
	if ctype != "" {
		req.Header.Set("Content-Type", ctype)
	}
	if ctype == ContentImport {
		// Refusals that need no dumps (bad name, run exists) come
		// before any is sent.
		req.Header.Set("Expect", "100-continue")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, lost(err)
	}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusNoContent {
		return resp, nil
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, lost(err)
	}
	var eb struct {
		Error *Error `json:"error"`
	}
	if json.Unmarshal(data, &eb) == nil && eb.Error != nil && eb.Error.Code != "" {
		return nil, eb.Error
	}
	return nil, &Error{Code: CodeInternal, Message: fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, OneLine(strings.TrimSpace(string(data))))}
}

// lost turns the ways a connection ends early (EOF, reset, broken pipe)
// into ErrConnectionLost; other errors (no socket, refused) stay.
func lost(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
		return ErrConnectionLost
	}
	return err
}
