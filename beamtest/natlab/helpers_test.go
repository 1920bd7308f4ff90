package natlab

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"beam.dev/beam/beamtest/nslab"
	"beam.dev/beam/internal/tcpcc"
)

// helperSink serves TCP on its one argument, a listen address. It prints
// "listening ADDR" once bound; on each connection it reads until EOF and
// then writes "SHA256HEX LENGTH\n" of what it read and closes.
const helperSink = "natlab.sink"

// helperSend connects to its first argument (ADDR, a helperSink), sends
// as many bytes of testData as its second argument says, with the seed of
// its third, and checks the sink's answer. It prints "sent N in DURATION".
// It measures kernel TCP over the same links, as a baseline, with BBR where
// the kernel has it (as Beam's relay connections ask for), and prints
// "congestion=NAME" with the congestion control it got.
const helperSend = "natlab.send"

var (
	_ = nslab.RegisterHelper(helperSink, runSink)
	_ = nslab.RegisterHelper(helperSend, runSend)
)

func runSend(ctx context.Context, args []string) error {
	if len(args) != 3 {
		return errors.New("want ADDR SIZE SEED")
	}
	size, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	seed, err := strconv.ParseUint(args[2], 10, 64)
	if err != nil {
		return err
	}
	data := testData(size, seed)
	sum := sha256.Sum256(data)
	want := fmt.Sprintf("%x %d", sum, size)
	start := time.Now()
	c, err := tcpcc.Dialer().DialContext(ctx, "tcp4", args[0])
	if err != nil {
		return err
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	cc, err := tcpcc.Of(c)
	if err != nil {
		return err
	}
	fmt.Printf("congestion=%s\n", cc)
	if _, err := c.Write(data); err != nil {
		return err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return err
	}
	got, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if strings.TrimSpace(string(got)) != want {
		return fmt.Errorf("sink answered %q, want %q", got, want)
	}
	fmt.Printf("sent %d in %v\n", size, time.Since(start))
	return nil
}

func TestNSLabHelperProcess(t *testing.T) { nslab.RunHelperProcess(t) }

func runSink(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return errors.New("want one argument, the listen address")
	}
	ln, err := net.Listen("tcp4", args[0])
	if err != nil {
		return err
	}
	fmt.Printf("listening %s\n", ln.Addr())
	return nslab.ServeConns(ctx, ln, func(c net.Conn) {
		h := sha256.New()
		n, err := io.Copy(h, c)
		if err != nil {
			fmt.Printf("read from %s: %v\n", c.RemoteAddr(), err)
			return
		}
		fmt.Fprintf(c, "%x %d\n", h.Sum(nil), n)
	})
}
