package nslab

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"
)

// Built-in helpers for [Host.StartHelper] and [Host.RunHelper]. They work in
// every test binary that imports nslab. Addresses are "ip:port", IPv4 or
// (in a lab with [Lab.EnableIPv6]) IPv6 "[ip]:port"; a helper's sockets
// are of its listen or local address's family.
const (
	// HelperUDPEcho serves UDP on its one argument, a listen address. It
	// prints "listening ADDR" once bound and answers each datagram with
	// "seen SRC PAYLOAD", SRC being the address the datagram came from.
	HelperUDPEcho = "nslab.udpecho"

	// HelperTCPEcho serves TCP on its one argument, a listen address. It
	// prints "listening ADDR" once bound; on each connection it writes
	// "seen SRC\n" and then echoes what it reads.
	HelperTCPEcho = "nslab.tcpecho"

	// HelperUDPProbe sends from one UDP socket (flag -local, default any
	// port) to each destination argument in turn, retrying -tries times
	// (default 4) waiting -wait (default 500ms) each, and prints
	// "local ADDR" and then, per destination, "reply DEST SEEN RTT" (SEEN
	// as reported by a HelperUDPEcho) or "timeout DEST".
	HelperUDPProbe = "nslab.udpprobe"

	// HelperTCPProbe connects to each destination argument in turn (flag
	// -wait, default 2s) and prints "reply DEST SEEN" (SEEN as reported by
	// a HelperTCPEcho) or "error DEST MESSAGE".
	HelperTCPProbe = "nslab.tcpprobe"

	// HelperPunch does UDP hole punching from one socket (flag -local). It
	// asks the HelperUDPEcho at flag -stun for its public mapping and
	// prints "mapped ADDR"; then it waits for a line "peer ADDR" on
	// standard input and sends "ping" to ADDR every 20 ms, answers pings
	// with "pong", and prints "direct FROM RTT" for the first pong. It runs
	// until stopped.
	HelperPunch = "nslab.punch"

	// helperLink is the user-space link emulator of Router.SetNetem.
	helperLink = "nslab.link"

	// helperSysctl writes its "key=value" arguments to /proc/sys.
	helperSysctl = "nslab.sysctl"
)

var _ = registerBuiltins()

func registerBuiltins() bool {
	registerBuiltin(HelperUDPEcho, udpEcho)
	registerBuiltin(HelperTCPEcho, tcpEcho)
	registerBuiltin(HelperUDPProbe, udpProbe)
	registerBuiltin(HelperTCPProbe, tcpProbe)
	registerBuiltin(HelperPunch, punch)
	registerBuiltin(helperLink, runLink)
	registerBuiltin(helperSysctl, sysctl)
	return true
}

func oneArg(args []string, what string) (string, error) {
	if len(args) != 1 {
		return "", fmt.Errorf("want one argument, %s; got %q", what, args)
	}
	return args[0], nil
}

// family returns "4" for an IPv4 "ip:port" and "6" for an IPv6 one, to
// complete "udp" or "tcp". Anything else counts as IPv4, as before IPv6.
func family(addr string) string {
	if ap, err := netip.ParseAddrPort(addr); err == nil && ap.Addr().Is6() && !ap.Addr().Is4In6() {
		return "6"
	}
	return "4"
}

func udpEcho(ctx context.Context, args []string) error {
	addr, err := oneArg(args, "the listen address")
	if err != nil {
		return err
	}
	pc, err := net.ListenPacket("udp"+family(addr), addr)
	if err != nil {
		return err
	}
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()
	fmt.Printf("listening %s\n", pc.LocalAddr())
	buf := make([]byte, 64<<10)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		reply := fmt.Appendf(nil, "seen %s %s", from, buf[:n])
		if _, err := pc.WriteTo(reply, from); err != nil {
			fmt.Fprintf(os.Stderr, "write to %s: %v\n", from, err)
		}
	}
}

func tcpEcho(ctx context.Context, args []string) error {
	addr, err := oneArg(args, "the listen address")
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp"+family(addr), addr)
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	return ServeConns(ctx, ln, func(c net.Conn) {
		fmt.Fprintf(c, "seen %s\n", c.RemoteAddr())
		io.Copy(c, c)
	})
}

// ServeConns accepts on ln and runs handle on its own goroutine for each
// connection, closing the connection when handle returns. When ctx ends it
// closes ln and every open connection, waits for the handlers and returns
// nil; other accept errors are returned. Helpers use it for their servers.
func ServeConns(ctx context.Context, ln net.Listener, handle func(net.Conn)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	var mu sync.Mutex // guards conns
	conns := map[net.Conn]bool{}
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stop()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		mu.Lock()
		conns[c] = true
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(conns, c)
				mu.Unlock()
				c.Close()
			}()
			handle(c)
		})
	}
}

func udpProbe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(HelperUDPProbe, flag.ContinueOnError)
	local := fs.String("local", "0.0.0.0:0", "local address")
	tries := fs.Int("tries", 4, "attempts per destination")
	wait := fs.Duration("wait", 500*time.Millisecond, "wait per attempt")
	if err := fs.Parse(args); err != nil {
		return err
	}
	network := "udp" + family(*local)
	pc, err := net.ListenPacket(network, *local)
	if err != nil {
		return err
	}
	defer pc.Close()
	fmt.Printf("local %s\n", pc.LocalAddr())
	buf := make([]byte, 64<<10)
	for i, dst := range fs.Args() {
		ua, err := net.ResolveUDPAddr(network, dst)
		if err != nil {
			return err
		}
		seen, rtt, ok := "", time.Duration(0), false
		for try := 0; try < *tries && !ok && ctx.Err() == nil; try++ {
			token := fmt.Sprintf("probe-%d-%d", i, try)
			start := time.Now()
			if _, err := pc.WriteTo([]byte(token), ua); err != nil {
				return err
			}
			deadline := start.Add(*wait)
			for {
				pc.SetReadDeadline(deadline)
				n, from, err := pc.ReadFrom(buf)
				if err != nil {
					break
				}
				f := strings.Fields(string(buf[:n]))
				if from.String() == ua.String() && len(f) == 3 && f[0] == "seen" && f[2] == token {
					seen, rtt, ok = f[1], time.Since(start), true
					break
				}
			}
		}
		if ok {
			fmt.Printf("reply %s %s %s\n", dst, seen, rtt)
		} else {
			fmt.Printf("timeout %s\n", dst)
		}
	}
	return nil
}

func tcpProbe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(HelperTCPProbe, flag.ContinueOnError)
	wait := fs.Duration("wait", 2*time.Second, "connect and read timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	for _, dst := range fs.Args() {
		seen, err := tcpProbeOne(ctx, dst, *wait)
		if err != nil {
			fmt.Printf("error %s %s\n", dst, strings.ReplaceAll(err.Error(), "\n", " "))
			continue
		}
		fmt.Printf("reply %s %s\n", dst, seen)
	}
	return nil
}

func tcpProbeOne(ctx context.Context, dst string, wait time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp"+family(dst), dst)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(wait))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", err
	}
	f := strings.Fields(line)
	if len(f) != 2 || f[0] != "seen" {
		return "", fmt.Errorf("unexpected greeting %q", line)
	}
	return f[1], nil
}

func punch(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet(HelperPunch, flag.ContinueOnError)
	local := fs.String("local", "0.0.0.0:0", "local address")
	stun := fs.String("stun", "", "address of a udpecho helper")
	if err := fs.Parse(args); err != nil {
		return err
	}
	stunAddr, err := netip.ParseAddrPort(*stun)
	if err != nil {
		return fmt.Errorf("-stun: %w", err)
	}
	lc, err := net.ListenPacket("udp"+family(*local), *local)
	if err != nil {
		return err
	}
	pc := lc.(*net.UDPConn)
	stop := context.AfterFunc(ctx, func() { pc.Close() })
	defer stop()

	// Learn the public mapping.
	buf := make([]byte, 2048)
	var mapped string
	for try := 0; mapped == "" && try < 10; try++ {
		if _, err := pc.WriteToUDPAddrPort([]byte("mapping"), stunAddr); err != nil {
			return err
		}
		pc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, from, err := pc.ReadFromUDPAddrPort(buf)
			if err != nil {
				break
			}
			if f := strings.Fields(string(buf[:n])); from == stunAddr && len(f) == 3 && f[0] == "seen" {
				mapped = f[1]
				break
			}
		}
	}
	if mapped == "" {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("no answer from the -stun server")
	}
	pc.SetReadDeadline(time.Time{})
	fmt.Printf("mapped %s\n", mapped)

	// Wait for the peer's mapping on stdin.
	peerc := make(chan netip.AddrPort, 1)
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), "peer "); ok {
				if ap, err := netip.ParseAddrPort(strings.TrimSpace(s)); err == nil {
					peerc <- ap
					return
				}
				fmt.Fprintf(os.Stderr, "bad peer line %q\n", sc.Text())
			}
		}
	}()
	var peer netip.AddrPort
	select {
	case peer = <-peerc:
	case <-ctx.Done():
		return nil
	}

	var wg sync.WaitGroup
	defer wg.Wait()
	start := time.Now()
	wg.Go(func() {
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			pc.WriteToUDPAddrPort([]byte("ping"), peer)
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
		}
	})
	reported := false
	for {
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch string(buf[:n]) {
		case "ping":
			pc.WriteToUDPAddrPort([]byte("pong"), from)
		case "pong":
			if !reported {
				reported = true
				fmt.Printf("direct %s %s\n", from, time.Since(start))
			}
		}
	}
}

func sysctl(ctx context.Context, args []string) error {
	for _, kv := range args {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.Contains(k, "..") {
			return fmt.Errorf("bad sysctl %q, want key=value", kv)
		}
		file := "/proc/sys/" + strings.ReplaceAll(k, ".", "/")
		if err := os.WriteFile(file, []byte(v+"\n"), 0); err != nil {
			return err
		}
	}
	return nil
}
