package scalebench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// profiler takes pprof profiles of coordinator processes over the phases
// of a scenario, through their --debug-addr. A nil profiler does nothing.
//
// Over each phase it takes CPU profiles of profileCPU each, one after
// the other (the last one runs past the phase's end: go tool pprof takes
// them all at once), and goroutine dumps profileDumpEvery; at its end
// the mutex and block profiles (cumulative since the process started;
// empty unless it set their rates). Files are named NAME-PHASE-KIND.
type profiler struct {
	dir   string
	names []string
	addrs []string
	log   *slog.Logger
}

// profileCPU is how long each CPU profile runs; profileDumpEvery is how
// often a phase dumps the goroutines.
const (
	profileCPU       = 10 * time.Second
	profileDumpEvery = 10 * time.Second
)

func newProfiler(dir string, names []string, log *slog.Logger) (*profiler, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("scalebench: profile directory: %w", err)
	}
	p := &profiler{dir: dir, names: names, log: log}
	for range names {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("scalebench: pick a debug port: %w", err)
		}
		p.addrs = append(p.addrs, ln.Addr().String())
		ln.Close()
	}
	return p, nil
}

// args are the flags of the i'th process.
func (p *profiler) args(i int) []string {
	if p == nil {
		return nil
	}
	return []string{"--debug-addr", p.addrs[i]}
}

// phase starts profiling a phase; stop ends it and waits for the files.
func (p *profiler) phase(name string) (stop func()) {
	if p == nil {
		return func() {}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	start := time.Now()
	for i, who := range p.names {
		base := filepath.Join(p.dir, who+"-"+name+"-")
		wg.Go(func() {
			for ctx.Err() == nil {
				file := fmt.Sprintf("%scpu-%03ds.pprof", base, int(time.Since(start).Seconds()))
				p.fetch(context.Background(), p.addrs[i], fmt.Sprintf("/debug/pprof/profile?seconds=%d", int(profileCPU.Seconds())), file)
			}
		})
		wg.Go(func() {
			t := time.NewTicker(profileDumpEvery)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					p.fetch(ctx, p.addrs[i], "/debug/pprof/goroutine?debug=1", fmt.Sprintf("%sgoroutines-%03ds.txt", base, int(time.Since(start).Seconds())))
				}
			}
		})
	}
	return func() {
		for i, who := range p.names {
			base := filepath.Join(p.dir, who+"-"+name+"-")
			p.fetch(context.Background(), p.addrs[i], "/debug/pprof/mutex", base+"mutex.pprof")
			p.fetch(context.Background(), p.addrs[i], "/debug/pprof/block", base+"block.pprof")
			p.fetch(context.Background(), p.addrs[i], "/debug/pprof/goroutine?debug=1", base+"goroutines-end.txt")
		}
		cancel()
		wg.Wait()
	}
}

// fetch saves addr's path in file; failures are logged.
func (p *profiler) fetch(ctx context.Context, addr, path, file string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
	if err != nil {
		return
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			p.log.Warn("profile", "path", path, "err", err)
		}
		return
	}
	defer resp.Body.Close()
	f, err := os.Create(file)
	if err != nil {
		p.log.Warn("profile", "file", file, "err", err)
		return
	}
	defer f.Close()
	io.Copy(f, resp.Body)
}
