package scalebench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"time"
)

// Scenario is one measured run: a coordinator process with N streaming
// nodes, from registration to a restart.
type Scenario struct {
	// Bin is the beam binary (BuildBeam). Required.
	Bin string
	// Dir is an empty temporary directory for the coordinator's data and
	// log. Required.
	Dir string
	// N is the number of nodes, at least 2.
	N int
	// Args are extra flags of beam coordinator, such as --debug-addr
	// to profile it.
	Args []string
	// Changes is how many endpoint changes of one node to time; zero
	// means 3.
	Changes int
	// Restart, if set, ends the run by restarting the coordinator (SIGTERM,
	// as a service manager does, then a new process on the same data) and
	// timing how long the nodes take to settle on the new one.
	Restart bool
	// FullMapsInFlight is FleetOptions.FullMapsInFlight.
	FullMapsInFlight int
	// MaxRSS kills the coordinator, failing the run, if its RSS or this
	// process's passes this many bytes; zero means 6 GiB.
	MaxRSS uint64
	// PhaseTimeout bounds each phase (registration, full maps, settling,
	// one change, the restart); zero means 5 minutes plus 120 ms a node.
	PhaseTimeout time.Duration
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
	// ProfileDir, if set, gives the coordinator a --debug-addr and keeps
	// in this directory its pprof profiles over the full maps and the
	// changes (profiles.go).
	ProfileDir string
}

// Result is what a Scenario measured.
type Result struct {
	// N is the number of nodes.
	N int
	// Register is how long registering all N took (16 at a time).
	Register time.Duration
	// FullMaps is the time from opening all N streams at once until
	// every stream had delivered its full map; Settled until, in
	// addition, every node saw all its peers online (the online deltas
	// of that burst delivered).
	FullMaps, Settled time.Duration
	// Changes are the times for one node's endpoint change to reach the
	// other N-1, one per change.
	Changes []time.Duration
	// BytesPerNodePerChange is what each other node read from the
	// coordinator for one change, averaged over nodes and changes.
	BytesPerNodePerChange float64
	// FullMapBytesPerNode is what each node read on average from opening
	// the streams until every full map arrived, and SettleBytesPerNode
	// until every node saw every peer online.
	FullMapBytesPerNode, SettleBytesPerNode float64
	// CPU is the coordinator's CPU time from its start through the
	// changes; RSS its resident set then and PeakRSS its high-water mark.
	CPU          time.Duration
	RSS, PeakRSS uint64
	// FullMapsCPU is the coordinator's CPU time over FullMaps, and
	// FullMapsFleetCPU this process's (the fake nodes').
	FullMapsCPU, FullMapsFleetCPU time.Duration
	// FleetCPU is this process's CPU time over the same span: the fake
	// nodes share the machine with the coordinator, and a fleet that
	// needs as much CPU as the coordinator slows it down.
	FleetCPU time.Duration
	// RestartOnline is the time from stopping the coordinator (and
	// starting it again once it has exited) until every node's new stream had
	// delivered its full map (every node back online);
	// RestartSettled until, in addition, every node saw all its peers
	// online. Both are zero if not Scenario.Restart.
	RestartOnline, RestartSettled time.Duration
	// RestartBytesPerNode is what each node read from the coordinator
	// over RestartSettled, on average; RestartCPU the restarted
	// coordinator's CPU time from its start until settled.
	RestartBytesPerNode float64
	RestartCPU          time.Duration
	// RestartResumed is how many nodes' first map after the restart
	// resumed the peers they held rather than getting them all again.
	RestartResumed int
}

// RegisterRate is registrations per second.
func (r *Result) RegisterRate() float64 { return float64(r.N) / r.Register.Seconds() }

// MedianChange is the median of Changes.
func (r *Result) MedianChange() time.Duration {
	if len(r.Changes) == 0 {
		return 0
	}
	c := slices.Clone(r.Changes)
	slices.Sort(c)
	return c[len(c)/2]
}

// runDefaults fills a scenario's zero settings for n nodes, returns its
// logger, and raises the process's open files limit.
func runDefaults(n int, changes *int, maxRSS *uint64, phase *time.Duration, logger *slog.Logger) (*slog.Logger, error) {
	if *changes <= 0 {
		*changes = 3
	}
	if *maxRSS == 0 {
		*maxRSS = 6 << 30
	}
	if *phase <= 0 {
		*phase = 5*time.Minute + time.Duration(n)*120*time.Millisecond
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	_, err := RaiseFileLimit()
	return logger, err
}

// Run runs the scenario. It raises the process's open files limit, and
// always stops what it started.
func (sc Scenario) Run(ctx context.Context) (res *Result, err error) {
	if sc.Bin == "" || sc.Dir == "" || sc.N < 2 {
		return nil, errors.New("scalebench: Scenario.Bin, Dir and N >= 2 are required")
	}
	log, err := runDefaults(sc.N, &sc.Changes, &sc.MaxRSS, &sc.PhaseTimeout, sc.Logger)
	if err != nil {
		return nil, err
	}
	var prof *profiler
	if sc.ProfileDir != "" {
		if prof, err = newProfiler(sc.ProfileDir, []string{"coord"}, log); err != nil {
			return nil, err
		}
	}
	args := append(slices.Clip(sc.Args), prof.args(0)...)
	coord, err := NewCoordinator(CoordinatorOptions{Bin: sc.Bin, Dir: sc.Dir, Args: args})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var overRSS uint64
	var overWho string
	stopWatch := coord.Watch(sc.MaxRSS, 250*time.Millisecond, func(who string, rss uint64) {
		overWho, overRSS = who, rss
		cancel()
	})
	defer func() {
		stopWatch()
		if overRSS != 0 {
			err = errors.Join(fmt.Errorf("scalebench: %s RSS %d MiB passed the limit of %d MiB; killed the coordinator", overWho, overRSS>>20, sc.MaxRSS>>20), err)
		}
		if err != nil {
			err = fmt.Errorf("%w\ncoordinator log tail:\n%s", err, coord.LogTail(3000))
		}
	}()
	defer coord.Stop()
	phase := func(f func(ctx context.Context) error) error {
		pctx, pcancel := context.WithTimeout(ctx, sc.PhaseTimeout)
		defer pcancel()
		return f(pctx)
	}

	res = &Result{N: sc.N}
	self0, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	if err := phase(coord.Start); err != nil {
		return nil, err
	}
	ak, err := coord.AuthKey(ctx)
	if err != nil {
		return nil, err
	}
	fleet, err := NewFleet(FleetOptions{URL: coord.URL, N: sc.N, Logger: log, FullMapsInFlight: sc.FullMapsInFlight})
	if err != nil {
		return nil, err
	}
	defer fleet.Close()

	if err := phase(func(ctx context.Context) (err error) {
		res.Register, err = fleet.Register(ctx, ak, 16)
		return err
	}); err != nil {
		return nil, err
	}
	log.Info("registered", "n", sc.N, "took", res.Register, "per_s", res.RegisterRate())

	before, err := coord.Usage()
	if err != nil {
		return nil, err
	}
	fleet0, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	bytes0 := fleet.Bytes()
	start := time.Now()
	stopProf := prof.phase("fullmaps")
	fleet.Stream()
	if err := phase(fleet.WaitFullMaps); err != nil {
		stopProf()
		return nil, err
	}
	res.FullMaps = time.Since(start)
	res.FullMapBytesPerNode = float64(fleet.Bytes()-bytes0) / float64(sc.N)
	if after, err := coord.Usage(); err == nil {
		res.FullMapsCPU = after.CPU - before.CPU
	}
	if after, err := procUsage(os.Getpid()); err == nil {
		res.FullMapsFleetCPU = after.CPU - fleet0.CPU
	}
	stopProf()
	log.Info("full maps", "took", res.FullMaps, "coordinator_cpu", res.FullMapsCPU, "fleet_cpu", res.FullMapsFleetCPU)
	if err := phase(fleet.WaitSettled); err != nil {
		return nil, err
	}
	res.Settled = time.Since(start)
	res.SettleBytesPerNode = float64(fleet.Bytes()-bytes0) / float64(sc.N)
	log.Info("settled", "took", res.Settled)

	var bytes float64
	stopProf = prof.phase("changes")
	defer func() { stopProf() }()
	for i := range sc.Changes {
		if err := phase(func(ctx context.Context) error {
			took, b, err := fleet.Change(ctx, uint16(1001+i))
			res.Changes = append(res.Changes, took)
			bytes += b
			return err
		}); err != nil {
			return nil, err
		}
	}
	res.BytesPerNodePerChange = bytes / float64(sc.Changes)
	stopProf()
	stopProf = func() {}
	log.Info("changes", "took", res.Changes, "bytes_per_node", res.BytesPerNodePerChange)

	u, err := coord.Usage()
	if err != nil {
		return nil, err
	}
	res.CPU, res.RSS, res.PeakRSS = u.CPU, u.RSS, u.PeakRSS
	self, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	res.FleetCPU = self.CPU - self0.CPU
	log.Info("usage", "cpu", res.CPU, "rss_mib", res.RSS>>20, "peak_rss_mib", res.PeakRSS>>20, "fleet_cpu", res.FleetCPU)

	if sc.Restart {
		fleet.NextEpoch()
		start := time.Now()
		read0 := fleet.Bytes()
		coord.Stop()
		if err := phase(coord.Start); err != nil {
			return nil, err
		}
		if err := phase(fleet.WaitFullMaps); err != nil {
			return nil, err
		}
		res.RestartOnline = time.Since(start)
		res.RestartResumed = fleet.Resumed()
		log.Info("restart online", "took", res.RestartOnline, "resumed", res.RestartResumed)
		if err := phase(fleet.WaitSettled); err != nil {
			return nil, err
		}
		res.RestartSettled = time.Since(start)
		res.RestartBytesPerNode = float64(fleet.Bytes()-read0) / float64(sc.N)
		if u, err := coord.Usage(); err == nil {
			res.RestartCPU = u.CPU
		}
		log.Info("restart settled", "took", res.RestartSettled, "bytes_per_node", res.RestartBytesPerNode, "coordinator_cpu", res.RestartCPU)
	}
	return res, nil
}
