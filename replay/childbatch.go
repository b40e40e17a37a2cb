package replay

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ckptfs/ckptfs/internal/tailbuf"
)

// child is one running measurement child.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *tailbuf.Buffer
}

// runBatch starts one child per job, waits until all are ready, starts all
// loads at once, collects the results, and then lets all children exit
// together. wall is the time from the start signal to the last result.
func (b *bench) runBatch(ctx context.Context, label string, jobs []childJob) ([]childResult, time.Duration, error) {
	timeout := b.cfg.BatchTimeout
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	children := make([]*child, 0, len(jobs))
	defer func() {
		for _, c := range children {
			c.stdin.Close()
		}
		for _, c := range children {
			_ = c.cmd.Wait()
		}
	}()
	for _, job := range jobs {
		c, err := b.startChild(ctx, job)
		if err != nil {
			return nil, 0, fmt.Errorf("%w: %s: %v", ErrChild, label, err)
		}
		children = append(children, c)
	}
	for _, c := range children {
		line, err := c.next(ctx)
		if err != nil || line != childReady {
			return nil, 0, fmt.Errorf("%w: %s: no handshake from %s (got %q, %v): does its main call replay.MaybeRunChild() first?%s",
				ErrChild, label, b.exe, truncate(line, 200), err, c.stderrTail())
		}
	}
	t0 := time.Now()
	for _, c := range children {
		if _, err := io.WriteString(c.stdin, childGo+"\n"); err != nil {
			return nil, 0, fmt.Errorf("%w: %s: %v%s", ErrChild, label, err, c.stderrTail())
		}
	}
	out := make([]childResult, len(children))
	var wall time.Duration
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for j, c := range children {
		wg.Add(1)
		go func() {
			defer wg.Done()
			line, err := c.next(ctx)
			if err == nil {
				err = json.Unmarshal([]byte(line), &out[j])
				if err == nil && out[j].Err != "" {
					err = errors.New(out[j].Err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			wall = max(wall, time.Since(t0))
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("%w: %s: %s: %v%s", ErrChild, label, jobs[j].RAM, err, c.stderrTail())
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return nil, 0, firstErr
	}
	return out, wall, nil
}

func (b *bench) startChild(ctx context.Context, job childJob) (*child, error) {
	data, _ := json.Marshal(job)
	cmd := exec.CommandContext(ctx, b.exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(data))
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	c := &child{cmd: cmd, lines: make(chan string, 4), stderr: &tailbuf.Buffer{Max: 4096}}
	cmd.Stderr = c.stderr
	var err error
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %v", b.exe, err)
	}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
	}()
	return c, nil
}

// next returns the child's next stdout line.
func (c *child) next(ctx context.Context) (string, error) {
	select {
	case line, ok := <-c.lines:
		if !ok {
			return "", fmt.Errorf("child exited early")
		}
		return line, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (c *child) stderrTail() string {
	s := strings.TrimSpace(c.stderr.String())
	if s == "" {
		return ""
	}
	return "; stderr: " + truncate(s, 500)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
