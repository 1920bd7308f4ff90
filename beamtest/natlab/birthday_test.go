package natlab

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
)

const (
	// birthdayRuns is how many fresh easy/hard pairs TestBirthdayEasyHard
	// joins, and birthdayMinDirect how many must go direct.
	birthdayRuns      = 10
	birthdayMinDirect = 9
	// birthdayWithin is how soon after both see each other a pair must
	// have traffic on a direct path to count.
	birthdayWithin = 10 * time.Second
)

// birthdayRun is one pair of TestBirthdayEasyHard.
type birthdayRun struct {
	pathRun
	// Probes and ProbeTime are what the easy side's spray took, from its
	// log; -1 and negative if it did not log one.
	Probes    int   `json:"probes"`
	ProbeTime msDur `json:"probe_ms"`
	// Ports is how many ports the hard side opened.
	Ports int `json:"ports"`
}

var (
	sprayLogRE = regexp.MustCompile(`msg="birthday probing: (direct path found|no direct path)".* probes=(\d+) took=(\S+)`)
	portsLogRE = regexp.MustCompile(`msg="birthday probing: opened ports towards peer".* ports=(\d+)`)
)

// TestBirthdayEasyHard joins fresh pairs of devices, one behind an easy
// NAT and one behind a hard NAT (a random port for each destination),
// birthdayRuns times, with two relays (so two STUN servers at different
// addresses, from which the hard side learns that its NAT is hard). With
// traffic flowing through the relay, birthday probing (the hard side opens
// many ports towards the easy side, the easy side probes random ports of
// the hard side's public IP) must find a direct path within 10 s in at
// least birthdayMinDirect of the runs. It reports the probes and time each
// spray took.
func TestBirthdayEasyHard(t *testing.T) {
	w := newWorld(t, worldConfig{meshed: true})
	ctx := t.Context()
	var runs []birthdayRun
	var transfer string
	direct := 0
	for i := range birthdayRuns {
		a, b := w.addDevice(fmt.Sprintf("easy%d", i), nslab.NATEasy), w.addDevice(fmt.Sprintf("hard%d", i), nslab.NATHard)
		if err := upPair(ctx, a, b); err != nil {
			t.Fatal(err)
		}
		r := birthdayRun{pathRun: reachPath(ctx, a, b, pathDirect, time.Now(), birthdayWithin), Probes: -1, ProbeTime: -1}
		if i == birthdayRuns-1 && r.ok() {
			// The last pair moves data both ways over the path found;
			// the relays carry almost none of it.
			transfer = birthdayTransfer(t, w, a, b)
		}
		a.daemon.Stop()
		b.daemon.Stop()
		logs := string(a.daemon.Output()) + string(a.daemon.Stderr())
		if m := sprayLogRE.FindAllStringSubmatch(logs, -1); m != nil {
			last := m[len(m)-1]
			r.Probes, _ = strconv.Atoi(last[2])
			if d, err := time.ParseDuration(last[3]); err == nil {
				r.ProbeTime = msDur(d)
			}
		}
		hl := string(b.daemon.Output()) + string(b.daemon.Stderr())
		if m := portsLogRE.FindStringSubmatch(hl); m != nil {
			r.Ports, _ = strconv.Atoi(m[1])
		}
		if r.ok() {
			direct++
		}
		t.Logf("run %d: path %s (peer sees %s) after %v; spray %d probes in %v; hard side opened %d ports; %s",
			i, r.Path, r.PeerPath, r.ToWant, r.Probes, r.ProbeTime, r.Ports, r.Err)
		runs = append(runs, r)
	}
	var text strings.Builder
	fmt.Fprintf(&text, "easy-hard with birthday probing: direct within %v in %d of %d fresh joins\n", birthdayWithin, direct, birthdayRuns)
	for i, r := range runs {
		fmt.Fprintf(&text, "  run %d: %s after %v, spray %d probes in %v, %d ports opened\n", i, r.Path, r.ToWant, r.Probes, r.ProbeTime, r.Ports)
	}
	text.WriteString(transfer)
	t.Log(text.String())
	writeArtefact(t, w.out, "birthday-easy-hard", map[string]any{"runs": runs, "direct": direct}, text.String())
	if direct < birthdayMinDirect {
		t.Errorf("easy-hard went direct within %v in %d of %d runs, want at least %d", birthdayWithin, direct, birthdayRuns, birthdayMinDirect)
	}
}

// birthdayTransfer sends easyTransfer bytes from a to b and from b to a
// over their direct path and checks that the relays carried at most
// easyRelayAllowance bytes meanwhile (disco and keepalives, not the data).
// It returns a line for the report.
func birthdayTransfer(t *testing.T, w *world, a, b *device) string {
	t.Helper()
	ctx := t.Context()
	relayed := func() int64 {
		var n int64
		for _, r := range w.relays {
			s, err := r.stats(ctx)
			if err != nil {
				t.Fatal(err)
			}
			n += s.BytesRelayed
		}
		return n
	}
	before := relayed()
	took := map[string]time.Duration{}
	for _, pair := range [][2]*device{{a, b}, {b, a}} {
		d, err := pair[0].transfer(ctx, pair[1].name, testData(easyTransfer, 3), 60*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		took[pair[0].name] = d
	}
	carried := relayed() - before
	if carried > easyRelayAllowance {
		t.Errorf("the relays carried %d bytes during two %d-byte transfers over the birthday path, want at most %d", carried, easyTransfer, easyRelayAllowance)
	}
	return fmt.Sprintf("last pair: %d KiB each way over the path found, %v (easy to hard) and %v (hard to easy); relays carried %d bytes meanwhile\n",
		easyTransfer>>10, took[a.name].Round(time.Millisecond), took[b.name].Round(time.Millisecond), carried)
}
