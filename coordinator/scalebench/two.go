package scalebench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// TwoScenario is one measured run of two coordinator processes sharing one
// PostgreSQL database (replicas with the same coordinator.key, admin.token
// and relay.token), with N nodes: the even ones (node 0 among them) stream
// from the first, A, the odd ones from the second, B.
type TwoScenario struct {
	// Bin is the beam binary (BuildBeam). Required.
	Bin string
	// Dir is an empty temporary directory for the coordinators' data and
	// logs. Required.
	Dir string
	// DB is the PostgreSQL URL both coordinators get as --db; the
	// database must exist and be empty. Required.
	DB string
	// N is the number of nodes, at least 4.
	N int
	// Args are extra flags of both beam coordinators.
	Args []string
	// Changes is how many endpoint changes of node 0 to time; zero means 3.
	Changes int
	// FullMapsInFlight is FleetOptions.FullMapsInFlight.
	FullMapsInFlight int
	// MaxRSS kills a coordinator, failing the run, if its RSS or this
	// process's passes this many bytes; zero means 6 GiB.
	MaxRSS uint64
	// PhaseTimeout bounds each phase; zero means 5 minutes plus 120 ms a
	// node.
	PhaseTimeout time.Duration
	// Logger receives progress lines; nil discards them.
	Logger *slog.Logger
	// ProfileDir, if set, gives each coordinator a --debug-addr and
	// keeps in this directory their pprof profiles over registration,
	// the full maps and the changes (profiles.go).
	ProfileDir string
	// DBCPU, if set, returns the CPU time the database server has used
	// so far (pgtest.Server.CPU): it runs on the same cores.
	DBCPU func() (time.Duration, error)
}

// TwoResult is what a TwoScenario measured.
type TwoResult struct {
	// N is the number of nodes, half on each coordinator.
	N int
	// Register is how long registering all N took (16 at a time, every
	// other one on each coordinator).
	Register time.Duration
	// FullMaps is the time from opening all N streams at once until every
	// stream had delivered its full map (with every other node, on either
	// coordinator, as a peer); Settled until, in addition, every node saw
	// all its peers online.
	FullMaps, Settled time.Duration
	// ShortFullMaps is how many of those full maps lacked some peers
	// (nodes registered on the other coordinator a moment before, which
	// came as peers added afterwards).
	ShortFullMaps int
	// Changes are the times for node 0's endpoint change, sent to A, to
	// reach every other node streaming from A; CrossChanges the times
	// from the same start until every node streaming from B had it
	// (through the database), one per change.
	Changes, CrossChanges []time.Duration
	// FirstChanges and FirstCrossChanges are the times from the same
	// start until the first node on A, and on B, had it: the rest of
	// Changes and CrossChanges is the fan-out to the others (and their
	// reading it).
	FirstChanges, FirstCrossChanges []time.Duration
	// BytesPerNodePerChange is what each other node read from its
	// coordinator for one change, averaged over nodes and changes.
	BytesPerNodePerChange float64
	// CPU, RSS and PeakRSS are each coordinator's (A, then B), from its
	// start through the changes, as in Result.
	CPU          [2]time.Duration
	RSS, PeakRSS [2]uint64
	// FullMapsCPU is each coordinator's CPU time over FullMaps, and
	// FullMapsFleetCPU this process's (the fake nodes').
	FullMapsCPU      [2]time.Duration
	FullMapsFleetCPU time.Duration
	// FleetCPU is this process's CPU time over the same span.
	FleetCPU time.Duration
	// DBCPU is the database server's CPU time from the coordinators'
	// start through the changes, RegisterDBCPU over Register and
	// FullMapsDBCPU over FullMaps; zero without TwoScenario.DBCPU.
	DBCPU, RegisterDBCPU, FullMapsDBCPU time.Duration
	// ChangesCPU is each coordinator's CPU time over the changes, and
	// FleetChangesCPU this process's.
	ChangesCPU      [2]time.Duration
	FleetChangesCPU time.Duration
}

// RegisterRate is registrations per second.
func (r *TwoResult) RegisterRate() float64 { return float64(r.N) / r.Register.Seconds() }

// MedianChange and MedianCrossChange are the medians of Changes and
// CrossChanges.
func (r *TwoResult) MedianChange() time.Duration      { return median(r.Changes) }
func (r *TwoResult) MedianCrossChange() time.Duration { return median(r.CrossChanges) }

// SumCPU and MaxRSS sum the coordinators' CPU times and take the larger
// RSS.
func (r *TwoResult) SumCPU() time.Duration { return r.CPU[0] + r.CPU[1] }
func (r *TwoResult) MaxRSS() uint64        { return max(r.RSS[0], r.RSS[1]) }

func median(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	c := slices.Clone(d)
	slices.Sort(c)
	return c[len(c)/2]
}

// replicaSecrets are the files replicas of one coordinator share.
var replicaSecrets = []string{"coordinator.key", "admin.token", "relay.token"}

// copySecrets copies a started coordinator's secrets into another's data
// directory, which it creates.
func copySecrets(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return fmt.Errorf("scalebench: make replica data directory: %w", err)
	}
	for _, name := range replicaSecrets {
		b, err := os.ReadFile(filepath.Join(from, name))
		if err != nil {
			return fmt.Errorf("scalebench: read coordinator secret: %w", err)
		}
		if err := os.WriteFile(filepath.Join(to, name), b, 0o600); err != nil {
			return fmt.Errorf("scalebench: write replica secret: %w", err)
		}
	}
	return nil
}

// Run runs the scenario. It raises the process's open files limit, and
// always stops what it started.
func (sc TwoScenario) Run(ctx context.Context) (res *TwoResult, err error) {
	if sc.Bin == "" || sc.Dir == "" || sc.DB == "" || sc.N < 4 {
		return nil, errors.New("scalebench: TwoScenario.Bin, Dir, DB and N >= 4 are required")
	}
	log, err := runDefaults(sc.N, &sc.Changes, &sc.MaxRSS, &sc.PhaseTimeout, sc.Logger)
	if err != nil {
		return nil, err
	}
	var coords [2]*Coordinator
	var prof *profiler
	if sc.ProfileDir != "" {
		if prof, err = newProfiler(sc.ProfileDir, []string{"a", "b"}, log); err != nil {
			return nil, err
		}
	}
	for i, name := range []string{"a", "b"} {
		dir := filepath.Join(sc.Dir, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("scalebench: make coordinator directory: %w", err)
		}
		args := append([]string{"--db", sc.DB}, sc.Args...)
		args = append(args, prof.args(i)...)
		if coords[i], err = NewCoordinator(CoordinatorOptions{Bin: sc.Bin, Dir: dir, Args: args}); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var overRSS uint64
	var overWho string
	for i, c := range coords {
		stop := c.Watch(sc.MaxRSS, 250*time.Millisecond, func(who string, rss uint64) {
			if who == "coordinator" {
				who = "coordinator " + string(rune('A'+i))
			}
			overWho, overRSS = who, rss
			cancel()
		})
		defer stop()
	}
	defer func() {
		if overRSS != 0 {
			err = errors.Join(fmt.Errorf("scalebench: %s RSS %d MiB passed the limit of %d MiB; killed it", overWho, overRSS>>20, sc.MaxRSS>>20), err)
		}
		if err != nil {
			err = fmt.Errorf("%w\ncoordinator A log tail:\n%s\ncoordinator B log tail:\n%s", err, coords[0].LogTail(3000), coords[1].LogTail(3000))
		}
	}()
	defer coords[1].Stop()
	defer coords[0].Stop()
	phase := func(f func(ctx context.Context) error) error {
		pctx, pcancel := context.WithTimeout(ctx, sc.PhaseTimeout)
		defer pcancel()
		return f(pctx)
	}

	res = &TwoResult{N: sc.N}
	self0, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	// dbCPU is the database's CPU time so far, 0 if unknown.
	dbCPU := func() time.Duration {
		if sc.DBCPU == nil {
			return 0
		}
		d, err := sc.DBCPU()
		if err != nil {
			log.Warn("database CPU time", "err", err)
		}
		return d
	}
	db0 := dbCPU()
	if err := phase(coords[0].Start); err != nil {
		return nil, err
	}
	if err := copySecrets(coords[0].DataDir(), coords[1].DataDir()); err != nil {
		return nil, err
	}
	if err := phase(coords[1].Start); err != nil {
		return nil, err
	}
	ak, err := coords[0].AuthKey(ctx)
	if err != nil {
		return nil, err
	}
	fleet, err := NewFleet(FleetOptions{URLs: []string{coords[0].URL, coords[1].URL}, N: sc.N, Logger: log, FullMapsInFlight: sc.FullMapsInFlight})
	if err != nil {
		return nil, err
	}
	defer fleet.Close()

	dbReg := dbCPU()
	stopProf := prof.phase("register")
	if err := phase(func(ctx context.Context) (err error) {
		res.Register, err = fleet.Register(ctx, ak, 16)
		return err
	}); err != nil {
		return nil, err
	}
	stopProf()
	dbFull := dbCPU()
	res.RegisterDBCPU = dbFull - dbReg
	log.Info("registered", "n", sc.N, "took", res.Register, "per_s", res.RegisterRate(), "db_cpu", res.RegisterDBCPU)

	var before [2]Usage
	for i, c := range coords {
		if before[i], err = c.Usage(); err != nil {
			return nil, err
		}
	}
	fleet0, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	dbFull = dbCPU()
	start := time.Now()
	stopProf = prof.phase("fullmaps")
	fleet.Stream()
	// A full map from B may lack the last few nodes registered on A
	// (they reach B through the database a moment later, as peers
	// added), so this waits for the full maps alone and counts the short
	// ones; WaitSettled then waits until every node knows and sees all
	// N-1 peers online.
	ep := fleet.cur.Load()
	if err := phase(func(ctx context.Context) error {
		return fleet.waitFor(ctx, "full maps", func() int64 { return ep.full.Load() }, int64(sc.N))
	}); err != nil {
		return nil, err
	}
	res.FullMaps = time.Since(start)
	stopProf()
	res.ShortFullMaps = int(fleet.badFulls.Load())
	for i, c := range coords {
		if after, err := c.Usage(); err == nil {
			res.FullMapsCPU[i] = after.CPU - before[i].CPU
		}
	}
	if self, err := procUsage(os.Getpid()); err == nil {
		res.FullMapsFleetCPU = self.CPU - fleet0.CPU
	}
	res.FullMapsDBCPU = dbCPU() - dbFull
	log.Info("full maps", "took", res.FullMaps, "short", res.ShortFullMaps, "coordinator_cpu", res.FullMapsCPU,
		"fleet_cpu", res.FullMapsFleetCPU, "db_cpu", res.FullMapsDBCPU)
	if err := phase(fleet.WaitSettled); err != nil {
		return nil, err
	}
	res.Settled = time.Since(start)
	log.Info("settled", "took", res.Settled)

	var bytes float64
	for i, c := range coords {
		if before[i], err = c.Usage(); err != nil {
			return nil, err
		}
	}
	selfBefore, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	stopProf = prof.phase("changes")
	for i := range sc.Changes {
		if err := phase(func(ctx context.Context) error {
			t, b, err := fleet.changeTwo(ctx, uint16(2001+i))
			res.Changes = append(res.Changes, t.same)
			res.CrossChanges = append(res.CrossChanges, t.cross)
			res.FirstChanges = append(res.FirstChanges, t.firstSame)
			res.FirstCrossChanges = append(res.FirstCrossChanges, t.firstCross)
			bytes += b
			return err
		}); err != nil {
			return nil, err
		}
	}
	stopProf()
	for i, c := range coords {
		if after, err := c.Usage(); err == nil {
			res.ChangesCPU[i] = after.CPU - before[i].CPU
		}
	}
	if self, err := procUsage(os.Getpid()); err == nil {
		res.FleetChangesCPU = self.CPU - selfBefore.CPU
	}
	res.BytesPerNodePerChange = bytes / float64(sc.Changes)
	log.Info("changes", "same", res.Changes, "cross", res.CrossChanges, "first_same", res.FirstChanges,
		"first_cross", res.FirstCrossChanges, "bytes_per_node", res.BytesPerNodePerChange,
		"coordinator_cpu", res.ChangesCPU, "fleet_cpu", res.FleetChangesCPU)

	for i, c := range coords {
		u, err := c.Usage()
		if err != nil {
			return nil, err
		}
		res.CPU[i], res.RSS[i], res.PeakRSS[i] = u.CPU, u.RSS, u.PeakRSS
	}
	self, err := procUsage(os.Getpid())
	if err != nil {
		return nil, err
	}
	res.FleetCPU = self.CPU - self0.CPU
	res.DBCPU = dbCPU() - db0
	log.Info("usage", "cpu", res.CPU, "rss", res.RSS, "peak_rss", res.PeakRSS, "fleet_cpu", res.FleetCPU, "db_cpu", res.DBCPU)
	return res, nil
}

// changeTimes are the times of one change: from the change until the
// first and the last other node on the first coordinator had it, and on
// the second.
type changeTimes struct {
	firstSame, same, firstCross, cross time.Duration
}

// changeTwo gives node 0, which streams from the first of two
// coordinators, a new endpoint (port) and waits until every other node has
// it. It returns the times the change took to reach the nodes on each
// coordinator, and the bytes each other node read in all, on average.
// port must differ from the last change's.
func (f *Fleet) changeTwo(ctx context.Context, port uint16) (t changeTimes, bytes float64, err error) {
	if len(f.markSeenVia) != 2 {
		return t, 0, errors.New("scalebench: changeTwo needs a fleet on two coordinators")
	}
	onA := int64((f.n+1)/2) - 1 // the even nodes but node 0
	onB := int64(f.n / 2)
	before := f.otherBytes()
	f.markSeen.Store(0)
	f.markSeenVia[0].Store(0)
	f.markSeenVia[1].Store(0)
	f.mark.Store(int64(port))
	defer f.mark.Store(0)
	start := time.Now()
	f.nodes[0].client.SetEndpoints([]netip.AddrPort{netip.AddrPortFrom(netip.MustParseAddr("198.51.100.7"), port)}, 0)
	// Both waits run from the same start; whichever finishes first, the
	// other's time is taken when its count is reached, so wait for each
	// in a goroutine of its own.
	type done struct {
		took time.Duration
		err  error
	}
	wait := func(what string, via int, want int64) <-chan done {
		ch := make(chan done, 1)
		go func() {
			err := f.waitVia(ctx, what, func() int64 { return f.markSeenVia[via].Load() }, want)
			ch <- done{time.Since(start), err}
		}()
		return ch
	}
	a1 := wait("a node on A that saw the change", 0, 1)
	b1 := wait("a node on B that saw the change", 1, 1)
	a := wait("nodes on A that saw the change", 0, onA)
	b := wait("nodes on B that saw the change", 1, onB)
	da1, db1, da, db := <-a1, <-b1, <-a, <-b
	if err := errors.Join(da1.err, db1.err, da.err, db.err); err != nil {
		return t, 0, err
	}
	t = changeTimes{firstSame: da1.took, same: da.took, firstCross: db1.took, cross: db.took}
	return t, float64(f.otherBytes()-before) / float64(f.n-1), nil
}

// waitVia is waitFor for two waiters at once: the fleet's poke channel
// wakes one waiter only, so this one also checks on a short tick.
func (f *Fleet) waitVia(ctx context.Context, what string, count func() int64, want int64) error {
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	return f.wait(ctx, what, count, want, tick.C)
}
