package node

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"beam.dev/beam/internal/privsock"
)

// UAPIDir is where WireGuard tools (wg(8), wgctrl) look for userspace
// devices' sockets.
const UAPIDir = "/var/run/wireguard"

// startUAPILocked serves the engine's read-only UAPI socket at
// UAPIDir/NAME.sock when Options.WireGuardName is set. n.mu held.
func (n *Node) startUAPILocked() error {
	if n.opts.WireGuardName == "" || n.engine == nil || n.uapiStop != nil {
		return nil
	}
	if runtime.GOOS == "windows" {
		return errors.New("a WireGuard UAPI socket (--wg-name) is served on Linux and macOS only")
	}
	if err := os.MkdirAll(UAPIDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", UAPIDir, err)
	}
	path := filepath.Join(UAPIDir, n.opts.WireGuardName+".sock")
	if c, err := net.Dial("unix", path); err == nil {
		c.Close()
		return fmt.Errorf("a WireGuard device named %q is already served at %s", n.opts.WireGuardName, path)
	}
	os.Remove(path)
	ln, err := privsock.Listen(path)
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	e := n.engine
	go func() {
		defer wg.Done()
		if err := e.ServeUAPI(ctx, ln); err != nil {
			n.logger.Warn("WireGuard UAPI socket", "err", err)
		}
	}()
	n.uapiStop = func() {
		cancel()
		wg.Wait()
		os.Remove(path)
	}
	return nil
}

func (n *Node) stopUAPILocked() {
	if n.uapiStop != nil {
		n.uapiStop()
		n.uapiStop = nil
	}
}
