package nslab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// netemSpec is a parsed [Router.SetNetem] spec.
type netemSpec struct {
	delay  time.Duration // added to every packet
	jitter time.Duration // delay varies uniformly by up to ± jitter
	loss   float64       // probability of dropping a packet, 0 to 1
}

// parseNetem parses the tc-netem subset "delay TIME [JITTER]" and
// "loss PERCENT%", in any order. An empty spec means no impairment.
func parseNetem(spec string) (netemSpec, error) {
	var s netemSpec
	f := strings.Fields(spec)
	seen := map[string]bool{}
	for i := 0; i < len(f); i++ {
		word := f[i]
		if seen[word] {
			return s, fmt.Errorf("netem spec %q: %q given twice", spec, word)
		}
		seen[word] = true
		switch word {
		case "delay":
			if i+1 >= len(f) {
				return s, fmt.Errorf("netem spec %q: delay needs a time", spec)
			}
			d, err := time.ParseDuration(f[i+1])
			if err != nil || d < 0 {
				return s, fmt.Errorf("netem spec %q: bad delay %q", spec, f[i+1])
			}
			s.delay = d
			i++
			if i+1 < len(f) {
				if j, err := time.ParseDuration(f[i+1]); err == nil {
					if j < 0 || j > d {
						return s, fmt.Errorf("netem spec %q: jitter %v must be between 0 and the delay", spec, j)
					}
					s.jitter = j
					i++
				}
			}
		case "loss":
			if i+1 >= len(f) {
				return s, fmt.Errorf("netem spec %q: loss needs a percentage", spec)
			}
			ps, ok := strings.CutSuffix(f[i+1], "%")
			p, err := strconv.ParseFloat(ps, 64)
			if !ok || err != nil || p < 0 || p > 100 {
				return s, fmt.Errorf("netem spec %q: bad loss %q, want a percentage such as 5%%", spec, f[i+1])
			}
			s.loss = p / 100
			i++
		default:
			return s, fmt.Errorf("netem spec %q: unsupported word %q (supported: delay TIME [JITTER], loss PERCENT%%)", spec, word)
		}
	}
	return s, nil
}

// runLink is the link emulator helper. Its arguments are two interfaces of
// the inet namespace: the router's port (off the bridge while impaired) and
// the spare port on the bridge. It prints "ready", then reads commands from
// standard input, one a line, and answers each with "ack N ok" or
// "ack N error: ..." (N counting commands from 1):
//
//	spec SPEC   forward between the ports with the impairment SPEC
//	off         stop forwarding and close the sockets
func runLink(ctx context.Context, args []string) error {
	if len(args) != 2 {
		return fmt.Errorf("want two interface names, got %q", args)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var fw *forwarder
	defer func() {
		if fw != nil {
			fw.close()
		}
	}()
	fmt.Println("ready")
	for seq := 1; ; seq++ {
		var line string
		select {
		case <-ctx.Done():
			return nil
		case l, ok := <-lines:
			if !ok {
				return nil
			}
			line = l
		}
		err := func() error {
			if line == "off" {
				if fw != nil {
					fw.close()
					fw = nil
				}
				return nil
			}
			spec, ok := strings.CutPrefix(line, "spec ")
			if !ok && line != "spec" {
				return fmt.Errorf("unknown command %q", line)
			}
			s, err := parseNetem(spec)
			if err != nil {
				return err
			}
			if fw == nil {
				if fw, err = newForwarder(args[0], args[1]); err != nil {
					return err
				}
			}
			fw.spec.Store(&s)
			return nil
		}()
		if err != nil {
			fmt.Printf("ack %d error: %v\n", seq, strings.ReplaceAll(err.Error(), "\n", " "))
		} else {
			fmt.Printf("ack %d ok\n", seq)
		}
	}
}

// Linux packet socket constants missing from package syscall.
const (
	ethPAll              = 0x0003
	packetVnetHdr        = 15
	packetIgnoreOutgoing = 23
	vnetHdrLen           = 10 // struct virtio_net_hdr
	vnetFlagNeedsCsum    = 1
)

// forwarder copies frames both ways between two interfaces through packet
// sockets with virtio-net headers (so GSO packets and pending checksums pass
// unchanged), delaying and dropping them as spec says.
type forwarder struct {
	spec atomic.Pointer[netemSpec]
	a, b *os.File
	quit chan struct{}
	wg   sync.WaitGroup
}

func newForwarder(ifA, ifB string) (*forwarder, error) {
	a, err := openPacketSocket(ifA)
	if err != nil {
		return nil, err
	}
	b, err := openPacketSocket(ifB)
	if err != nil {
		a.Close()
		return nil, err
	}
	fw := &forwarder{a: a, b: b, quit: make(chan struct{})}
	fw.spec.Store(&netemSpec{})
	fw.pipe(a, b)
	fw.pipe(b, a)
	return fw, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

type frame struct {
	due  time.Time
	data []byte
}

// pipe starts the goroutines that move frames from src to dst.
func (fw *forwarder) pipe(src, dst *os.File) {
	q := make(chan frame, 4096)
	fw.wg.Go(func() {
		defer close(q)
		buf := make([]byte, 256<<10)
		var last time.Time
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			if n < vnetHdrLen {
				continue
			}
			s := fw.spec.Load()
			if s.loss > 0 && rand.Float64() < s.loss {
				continue
			}
			due := time.Now().Add(s.delay)
			if s.jitter > 0 {
				due = due.Add(time.Duration(rand.Int64N(int64(2*s.jitter+1))) - s.jitter)
			}
			if due.Before(last) {
				due = last // keep order, as netem does without reordering
			}
			last = due
			data := bytes.Clone(buf[:n])
			data[0] &= vnetFlagNeedsCsum // drop DATA_VALID, an rx-only flag
			select {
			case q <- frame{due, data}:
			default: // queue full: tail drop
			}
		}
	})
	fw.wg.Go(func() {
		t := time.NewTimer(0)
		defer t.Stop()
		for f := range q {
			if d := time.Until(f.due); d > 0 {
				t.Reset(d)
				select {
				case <-t.C:
				case <-fw.quit:
					return
				}
			}
			if _, err := dst.Write(f.data); err != nil && errors.Is(err, os.ErrClosed) {
				return
			}
		}
	})
}

// close stops forwarding and waits for the goroutines.
func (fw *forwarder) close() {
	close(fw.quit)
	fw.a.Close()
	fw.b.Close()
	fw.wg.Wait()
}
