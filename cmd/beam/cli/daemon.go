package cli

import (
	"bufio"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"beam.dev/beam/localapi"
	"beam.dev/beam/node"
)

// DaemonOptions are the flags of beam daemon.
type DaemonOptions struct {
	Socket       string
	StateDir     string
	Port         uint16
	SOCKS5       string
	HTTPProxy    string
	DNSListen    string
	DNSUpstreams []string
	LogLevel     string
	Hostname     string
	WGName       string
	ACMECA       string // ACME directory for the certificates of tls routes
	ACMECARoot   string // PEM file: roots trusted for the ACME server's HTTPS
	ACMEEmail    string
}

// daemonFlags registers the daemon's own flags on cmd (beam up passes them on).
func daemonFlags(cmd *cobra.Command, o *DaemonOptions) {
	cmd.Flags().Uint16Var(&o.Port, "port", 0, "UDP port for WireGuard (0 picks one)")
	cmd.Flags().StringVar(&o.SOCKS5, "socks5", "", "serve a SOCKS5 proxy into the mesh on this loopback address (e.g. 127.0.0.1:1080)")
	cmd.Flags().StringVar(&o.HTTPProxy, "http-proxy", "", "serve an HTTP proxy into the mesh on this loopback address")
	cmd.Flags().StringVar(&o.DNSListen, "dns-listen", "", "also serve MagicDNS on this loopback address (UDP and TCP)")
	cmd.Flags().StringSliceVar(&o.DNSUpstreams, "dns-upstream", nil, "upstream resolvers for other names (default: /etc/resolv.conf)")
	cmd.Flags().StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
	cmd.Flags().StringVar(&o.ACMECA, "acme-ca", "", "ACME directory URL: terminate TLS of this device's --tls-passthrough routes with its own certificate, obtained by DNS-01 through the coordinator (default: the app terminates TLS)")
	cmd.Flags().StringVar(&o.ACMECARoot, "acme-ca-root", "", "PEM file of the roots to trust for the ACME server's HTTPS (default: the system roots)")
	cmd.Flags().StringVar(&o.ACMEEmail, "acme-email", "", "contact email of the ACME account")
}

// NewCmdDaemon returns the beam daemon command: the headless daemon.
func NewCmdDaemon(f *Factory, in *instanceFlags, runF func(*DaemonOptions) error) *cobra.Command {
	o := &DaemonOptions{}
	cmd := &cobra.Command{
		Use:   "daemon",
		Short: "Run the node daemon in the foreground (beam up starts one if needed)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.Socket, o.StateDir = in.socketPath(f), in.stateDir(f)
			if runF != nil {
				return runF(o)
			}
			return runDaemon(cmd.Context(), f, o)
		},
	}
	daemonFlags(cmd, o)
	cmd.Flags().StringVar(&o.Hostname, "hostname", "", "default hostname to register (default: the host's name)")
	cmd.Flags().StringVar(&o.WGName, "wg-name", "", "serve the WireGuard device read-only as NAME for `wg show NAME` and wgctrl (/var/run/wireguard/NAME.sock)")
	return cmd
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("bad --log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// requireLoopback refuses proxy/DNS listeners on non-loopback addresses:
// they would open the mesh to the host's network.
func requireLoopback(flag, addr string) error {
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return fmt.Errorf("--%s %q: want IP:PORT: %w", flag, addr, err)
	}
	if !ap.Addr().IsLoopback() {
		return fmt.Errorf("--%s %s: only loopback addresses are allowed", flag, addr)
	}
	return nil
}

func runDaemon(ctx context.Context, f *Factory, o *DaemonOptions) error {
	level, err := parseLevel(o.LogLevel)
	if err != nil {
		return err
	}
	for flag, v := range map[string]string{"socks5": o.SOCKS5, "http-proxy": o.HTTPProxy, "dns-listen": o.DNSListen} {
		if v != "" {
			if err := requireLoopback(flag, v); err != nil {
				return err
			}
		}
	}
	logger := f.Logger(level)
	upstreams, err := dnsUpstreams(o.DNSUpstreams)
	if err != nil {
		return err
	}
	hostname := o.Hostname
	if hostname == "" {
		hostname, _ = os.Hostname()
	}
	var acmeRoots *x509.CertPool
	if o.ACMECARoot != "" {
		pem, err := os.ReadFile(o.ACMECARoot)
		if err != nil {
			return fmt.Errorf("--acme-ca-root: %w", err)
		}
		acmeRoots = x509.NewCertPool()
		if !acmeRoots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--acme-ca-root %s: no PEM certificates", o.ACMECARoot)
		}
	}
	n, err := node.New(node.Options{
		StateDir:         o.StateDir,
		Socket:           o.Socket,
		Logger:           logger,
		ListenPort:       o.Port,
		DNSUpstreams:     upstreams,
		Hostname:         hostname,
		WireGuardName:    o.WGName,
		ACMEDirectoryURL: o.ACMECA,
		ACMETrustedRoots: acmeRoots,
		ACMEEmail:        o.ACMEEmail,
	})
	if err != nil {
		return err
	}
	defer n.Close()
	ln, err := localapi.ListenUnix(o.Socket)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	errc := make(chan error, 4)
	srv := &http.Server{Handler: localapi.New(n, logger)}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("local API: %w", err)
		}
	}()
	defer srv.Close()
	serve := func(name, addr string, fn func(context.Context, net.Listener) error) error {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%s listen: %w", name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx, l); err != nil {
				errc <- fmt.Errorf("%s: %w", name, err)
			}
		}()
		logger.Info("serving", "what", name, "addr", addr)
		return nil
	}
	if o.SOCKS5 != "" {
		if err := serve("socks5", o.SOCKS5, n.ServeSOCKS5); err != nil {
			return err
		}
	}
	if o.HTTPProxy != "" {
		if err := serve("http-proxy", o.HTTPProxy, n.ServeHTTPProxy); err != nil {
			return err
		}
	}
	if o.DNSListen != "" {
		if err := serve("dns-tcp", o.DNSListen, n.Resolver().ServeStream); err != nil {
			return err
		}
		pc, err := net.ListenPacket("udp", o.DNSListen)
		if err != nil {
			return fmt.Errorf("dns listen: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.Resolver().ServePacket(ctx, pc); err != nil {
				errc <- fmt.Errorf("dns: %w", err)
			}
		}()
	}
	if err := n.Start(); err != nil {
		return err
	}
	pidFile := filepath.Join(o.StateDir, "daemon.pid")
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}
	defer os.Remove(pidFile)
	logger.Info("daemon started", "socket", o.Socket, "state", o.StateDir)
	select {
	case <-ctx.Done():
		logger.Info("daemon stopping")
		return nil
	case err := <-errc:
		return err
	}
}

// dnsUpstreams parses --dns-upstream values, or reads /etc/resolv.conf.
func dnsUpstreams(flags []string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, s := range flags {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			out = append(out, ap)
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("bad --dns-upstream %q: want IP or IP:PORT", s)
		}
		out = append(out, netip.AddrPortFrom(a, 53))
	}
	if len(flags) > 0 {
		return out, nil
	}
	fh, err := os.Open("/etc/resolv.conf")
	if err != nil {
		return nil, nil
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			if a, err := netip.ParseAddr(fields[1]); err == nil && a != node.MagicDNSIPv4 {
				out = append(out, netip.AddrPortFrom(a, 53))
			}
		}
	}
	return out, nil
}
