package kvmrec

import (
	"context"
	"log/slog"
	"time"

	"github.com/ckptfs/ckptfs/index"
)

// livePacker packs intervals as their working sets are committed. Its
// queue is short: an interval that finds it full is left to the final
// pass, so packing never holds up the store.
type livePacker struct {
	st   *index.Store
	run  string
	log  *slog.Logger
	in   chan int
	done chan struct{}
}

func startLivePacker(ctx context.Context, st *index.Store, run string, log *slog.Logger) *livePacker {
	p := &livePacker{st: st, run: run, log: log, in: make(chan int, 2), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for i := range p.in {
			if ctx.Err() != nil {
				continue // drain: the final pass packs what is left
			}
			t := time.Now()
			n, err := st.PackInterval(ctx, run, i)
			if err != nil && ctx.Err() == nil {
				log.Warn("packing a working set", "run", run, "interval", i, "err", err)
				continue
			}
			log.Debug("packed", "run", run, "interval", i, "frames", n, "took", time.Since(t))
		}
	}()
	return p
}

// offer queues interval i, or drops it when the packer is behind.
func (p *livePacker) offer(i int) {
	select {
	case p.in <- i:
	default:
		p.log.Debug("packer behind; interval left to the final pass", "run", p.run, "interval", i)
	}
}

func (p *livePacker) stop() {
	close(p.in)
	<-p.done
}
