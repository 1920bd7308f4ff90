package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mdp/qrterminal/v3"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/bcrypt"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/wire"
)

// ExposeOptions are the flags of beam expose.
type ExposeOptions struct {
	Port uint16
	// Upstream is where the daemon forwards instead of 127.0.0.1:Port
	// (see parseTarget).
	Upstream       string
	Name           string
	Domain         string
	TCP            bool
	UDP            bool
	TLSPassthrough bool
	BasicAuth      []string
	// OIDC are the sign-in rules of --oidc.
	OIDC          []string
	AllowIP       []string
	DenyIP        []string
	RateLimit     string
	HeaderAdd     []string
	HeaderRemove  []string
	CORS          []string
	ProxyProtocol string
	Pool          bool
	QR            bool
	JSON          bool
	Background    bool
	// Inspect asks the daemon for the request inspector.
	Inspect bool
	// ConfigFile is a tunnels file (configs.Tunnels) to publish instead
	// of one TARGET.
	ConfigFile string
}

// NewCmdExpose returns the beam expose command.
func NewCmdExpose(f *Factory, in *instanceFlags, runF func(*ExposeOptions) error) *cobra.Command {
	o := &ExposeOptions{}
	cmd := &cobra.Command{
		Use:   "expose TARGET",
		Short: "Publish a local port on the public edge",
		Long: `Publish a local port of this device on the public edge.

  beam expose 3000                 https://NAME.DOMAIN -> 127.0.0.1:3000, one line per request until Ctrl-C;
                                   every request, replay and edit-and-replay at http://127.0.0.1:4040
  beam expose 3000 --inspect=false   without the request inspector
  beam expose https://localhost:8443   an app that speaks HTTPS itself (its certificate is not checked)
  beam expose 192.0.2.10:80        another host this device reaches
  beam expose 3000 --name app      https://app.DOMAIN
  beam expose --tcp 5432           tcp://EDGE:PORT -> 127.0.0.1:5432
  beam expose --udp 53             udp://EDGE:PORT -> 127.0.0.1:53
  beam expose 3000 --bg            keep it published by the daemon; see beam expose list / stop
  beam expose 3000 --name app --pool   serve app from several devices of one user or tag (each passes --pool)
  beam expose --config beam.hujson    every tunnel in the file at once (configs/beam.hujson shows one)

A name belongs to the device that published it first; other devices are
refused until it is withdrawn, unless every one of them asks for --pool.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if o.ConfigFile != "" {
				return exposeConfigArgs(cmd, args)
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.ConfigFile != "" {
				if runF != nil {
					return runF(o)
				}
				return runExposeConfig(cmd.Context(), f, in, o)
			}
			port, up, err := parseTarget(args[0])
			if err != nil {
				return err
			}
			o.Port, o.Upstream = port, up
			if runF != nil {
				return runF(o)
			}
			return runExpose(cmd.Context(), f, in, o)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&o.ConfigFile, "config", "", "HuJSON tunnels file: publish every route in it at once (keys are this command's flags, _ for -)")
	fl.StringVar(&o.Name, "name", "", "name under the edge domain (default: this node's name)")
	fl.StringVar(&o.Domain, "domain", "", "a verified custom domain to publish under")
	fl.BoolVar(&o.TCP, "tcp", false, "publish raw TCP on an edge port")
	fl.BoolVar(&o.UDP, "udp", false, "publish raw UDP datagrams on an edge port")
	fl.BoolVar(&o.TLSPassthrough, "tls-passthrough", false, "route TLS by SNI without decrypting; the device terminates TLS")
	fl.StringArrayVar(&o.BasicAuth, "basic-auth", nil, "require HTTP basic auth user:pass (repeatable)")
	fl.StringArrayVar(&o.AllowIP, "allow-ip", nil, "only allow clients from this CIDR (repeatable)")
	fl.StringArrayVar(&o.DenyIP, "deny-ip", nil, "refuse clients from this CIDR (repeatable)")
	fl.StringVar(&o.RateLimit, "rate-limit", "", "requests per client IP, like 20/s or 600/m")
	fl.StringArrayVar(&o.HeaderAdd, "header-add", nil, "add a request header 'Name: value' (repeatable)")
	fl.StringArrayVar(&o.HeaderRemove, "header-remove", nil, "remove a request header (repeatable)")
	fl.StringArrayVar(&o.CORS, "cors", nil, "allow this CORS origin (repeatable)")
	fl.StringArrayVar(&o.OIDC, "oidc", nil, "require a sign-in at the edge's OIDC provider by someone matching 'email:*@example.com', 'email:ADDRESS' or 'group:NAME' (repeatable)")
	fl.StringVar(&o.ProxyProtocol, "proxy-protocol", "", "send a PROXY protocol header (v1 or v2) to the device (tcp)")
	fl.BoolVar(&o.Pool, "pool", false, "share the name with other devices of your user or tag that publish it with --pool (load-balanced)")
	fl.BoolVar(&o.QR, "qr", false, "print the URL as a QR code")
	fl.BoolVar(&o.JSON, "json", false, "print JSON (the route, then one object per request)")
	fl.BoolVar(&o.Background, "bg", false, "leave the route published by the daemon and exit")
	fl.BoolVar(&o.Inspect, "inspect", true, "serve the request inspector (http://127.0.0.1:4040, or the next free port) for this device's routes")

	cmd.AddCommand(newCmdExposeList(f, in), newCmdExposeStop(f, in))
	return cmd
}

// loopbackHint returns, for the URL of a dev edge (http://NAME.localhost:PORT),
// how clients that do not resolve *.localhost reach it: browsers and curl
// map every *.localhost name to loopback, but getaddrinfo on most Linux
// systems (Python, Go, redis-cli, getent) does not. "" for other URLs.
func loopbackHint(u string) string {
	rest, ok := strings.CutPrefix(u, "http://")
	if !ok {
		return ""
	}
	host, port, err := net.SplitHostPort(rest)
	if err != nil || !strings.HasSuffix(host, ".localhost") {
		return ""
	}
	lb := "http://" + net.JoinHostPort("127.0.0.1", port)
	return fmt.Sprintf("from clients that do not resolve *.localhost: %s with the header \"Host: %s\" (curl -H 'Host: %s' %s/)", lb, host, host, lb)
}

// parseTarget reads what beam expose forwards to, as users write it:
// "3000", "localhost:3000" and "http://localhost:3000" (this device's
// 127.0.0.1:3000), "https://localhost:8443" (an app that speaks TLS) and
// "192.0.2.10:80" (another host the device reaches). It returns the
// route's port and the upstream for the daemon ("" for 127.0.0.1:PORT).
func parseTarget(s string) (uint16, string, error) {
	bad := func(why string) (uint16, string, error) {
		return 0, "", fmt.Errorf("bad target %q: %s (want PORT, HOST:PORT, http://HOST:PORT or https://HOST:PORT)", s, why)
	}
	scheme, rest, hasScheme := strings.Cut(s, "://")
	if !hasScheme {
		scheme, rest = "", s
	}
	scheme = strings.ToLower(scheme)
	switch scheme {
	case "", "http", "https":
	default:
		return bad("the scheme must be http or https")
	}
	rest = strings.TrimSuffix(rest, "/")
	if strings.ContainsAny(rest, "/?#@") {
		return bad("no path, query or user")
	}
	if !hasScheme && !strings.Contains(rest, ":") {
		p, err := strconv.ParseUint(rest, 10, 16)
		if err != nil || p == 0 {
			return bad("the port must be 1-65535")
		}
		return uint16(p), "", nil
	}
	host, ps, err := net.SplitHostPort(rest)
	if err != nil && hasScheme {
		host, ps, err = rest, "80", nil
		if scheme == "https" {
			ps = "443"
		}
	}
	if err != nil || host == "" {
		return bad("want a host and a port")
	}
	p, err := strconv.ParseUint(ps, 10, 16)
	if err != nil || p == 0 {
		return bad("the port must be 1-65535")
	}
	port := uint16(p)
	switch {
	case scheme == "https":
		return port, "https://" + net.JoinHostPort(host, ps), nil
	case strings.EqualFold(host, "localhost") || host == "127.0.0.1":
		return port, "", nil
	}
	return port, net.JoinHostPort(host, ps), nil
}

// exposeRequest turns the flags into a local API request.
func (o *ExposeOptions) exposeRequest() (apitype.ExposeRequest, error) {
	req := apitype.ExposeRequest{Port: o.Port, Upstream: o.Upstream, Name: o.Name, Domain: o.Domain, Proto: "http", Pool: o.Pool, Inspect: o.Inspect}
	n := 0
	for _, b := range []bool{o.TCP, o.UDP, o.TLSPassthrough} {
		if b {
			n++
		}
	}
	if n > 1 {
		return req, fmt.Errorf("choose one of --tcp, --udp and --tls-passthrough")
	}
	switch {
	case o.TCP:
		req.Proto = "tcp"
	case o.UDP:
		req.Proto = "udp"
	case o.TLSPassthrough:
		req.Proto = "tls"
	}
	switch {
	case o.Upstream == "" || req.Proto == "http":
	case req.Proto == "tcp" && !strings.HasPrefix(o.Upstream, "https://"):
	case req.Proto == "tcp":
		return req, fmt.Errorf("--tcp copies bytes as they are: give HOST:PORT or a port, not %s", o.Upstream)
	default:
		return req, fmt.Errorf("--udp and --tls-passthrough forward to a port of this device: give a port number, not %s", o.Upstream)
	}
	opts, err := o.routeOptions(req.Proto)
	if err != nil {
		return req, err
	}
	req.Options = opts
	return req, nil
}

// routeOptions turns the policy flags into route options for proto and
// checks them as the coordinator and the edge will: a value the edge
// could not enforce is refused here, never dropped there.
func (o *ExposeOptions) routeOptions(proto string) (wire.RouteOptions, error) {
	var ro wire.RouteOptions
	var errs []error
	ro.OIDC = slices.Clone(o.OIDC)
	for _, ba := range o.BasicAuth {
		u, p, ok := strings.Cut(ba, ":")
		if !ok || u == "" || p == "" {
			errs = append(errs, fmt.Errorf("--basic-auth %q: want user:pass", ba))
			continue
		}
		secret, err := basicAuthSecret(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("--basic-auth %q: %w", u, err))
			continue
		}
		ro.BasicAuth = append(ro.BasicAuth, wire.BasicAuthUser{User: u, Secret: secret})
	}
	for _, l := range []struct {
		flag string
		in   []string
		out  *[]netip.Prefix
	}{{"--allow-ip", o.AllowIP, &ro.AllowIP}, {"--deny-ip", o.DenyIP, &ro.DenyIP}} {
		for _, v := range l.in {
			for _, f := range strings.Split(v, ",") {
				p, err := wire.ParsePrefix(strings.TrimSpace(f))
				if err != nil {
					errs = append(errs, fmt.Errorf("%s %q: want an address or a CIDR like 192.0.2.0/24", l.flag, f))
					continue
				}
				*l.out = append(*l.out, p)
			}
		}
	}
	if o.RateLimit != "" {
		r, err := wire.ParseRate(o.RateLimit)
		if err != nil {
			errs = append(errs, fmt.Errorf("--rate-limit: %w", err))
		}
		ro.RateLimit = r
	}
	for _, h := range o.HeaderAdd {
		k, v, ok := strings.Cut(h, ":")
		if !ok || strings.TrimSpace(k) == "" {
			errs = append(errs, fmt.Errorf("--header-add %q: want 'Name: value'", h))
			continue
		}
		if ro.HeaderAdd == nil {
			ro.HeaderAdd = map[string]string{}
		}
		ro.HeaderAdd[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	ro.HeaderRemove = append(ro.HeaderRemove, o.HeaderRemove...)
	ro.CORS = append(ro.CORS, o.CORS...)
	switch o.ProxyProtocol {
	case "":
	case "v1", "1":
		ro.ProxyProtocol = 1
	case "v2", "2":
		ro.ProxyProtocol = 2
	default:
		errs = append(errs, fmt.Errorf("--proxy-protocol %q: want v1 or v2", o.ProxyProtocol))
	}
	if err := errors.Join(errs...); err != nil {
		return ro, err
	}
	if err := ro.Validate(proto); err != nil {
		return ro, fmt.Errorf("route options: %w", err)
	}
	return ro, nil
}

// basicAuthCost is the bcrypt cost of the hashes beam expose makes of
// --basic-auth passwords: about 50 ms of the edge's CPU for the first
// request that brings the right password (the edge then remembers it),
// and for every wrong one.
const basicAuthCost = 10

// basicAuthSecret turns the password of --basic-auth user:pass into the
// secret the route stores: a bcrypt hash made here, so the password
// itself never leaves the device (neither the coordinator nor the edges
// hold it). A secret given already hashed ($2a$, $2b$, $2y$,
// bcrypt-sha256:, sha256:) stays as it is. Bcrypt reads at most 72 bytes:
// a longer password (a generated token) is hashed with SHA-256 first and
// its hex digest hashed with bcrypt ("bcrypt-sha256:"), so that guessing
// it costs a bcrypt check like any other.
func basicAuthSecret(p string) (string, error) {
	if strings.HasPrefix(p, "$2") || strings.HasPrefix(p, "sha256:") || strings.HasPrefix(p, "bcrypt-sha256:") {
		return p, nil
	}
	p = strings.TrimPrefix(p, "plain:")
	if p == "" {
		return "", errors.New("empty password")
	}
	prefix := ""
	if len(p) > 72 {
		sum := sha256.Sum256([]byte(p))
		p, prefix = hex.EncodeToString(sum[:]), "bcrypt-sha256:"
	}
	h, err := bcrypt.GenerateFromPassword([]byte(p), basicAuthCost)
	if err != nil {
		return "", fmt.Errorf("hash the password: %w", err)
	}
	return prefix + string(h), nil
}

func runExpose(ctx context.Context, f *Factory, in *instanceFlags, o *ExposeOptions) error {
	req, err := o.exposeRequest()
	if err != nil {
		return err
	}
	lc := in.client(f)
	resp, err := lc.Expose(ctx, req)
	if err != nil {
		return err
	}
	if o.JSON {
		json.NewEncoder(f.Out).Encode(resp)
	} else {
		fmt.Fprintln(f.Out, resp.URL)
		if h := loopbackHint(resp.URL); h != "" {
			fmt.Fprintln(f.ErrOut, h)
		}
		if resp.Warning != "" {
			fmt.Fprintln(f.ErrOut, "warning:", resp.Warning)
		}
		if resp.InspectURL != "" {
			what := "requests"
			if resp.Proto == "tcp" || resp.Proto == "udp" || resp.Proto == "tls" {
				what = "connections"
			}
			fmt.Fprintf(f.ErrOut, "inspect %s at %s\n", what, resp.InspectURL)
		}
		if resp.ACMEChallengeCNAME != "" {
			fmt.Fprintf(f.ErrOut, "for this device's own certificate (beam up --acme-ca), create once at %s's DNS provider:\n  _acme-challenge.%s.  CNAME  %s.\n",
				resp.Host, resp.Host, resp.ACMEChallengeCNAME)
		}
	}
	if o.QR {
		qrterminal.GenerateHalfBlock(resp.URL, qrterminal.L, f.Out)
	}
	if o.Background {
		return nil
	}
	route := apitype.Route{Host: resp.Host, Proto: resp.Proto, PublicPort: resp.PublicPort, Port: resp.Port}
	stop := apitype.ExposeStopRequest{Name: resp.Host, Proto: resp.Proto}
	if resp.Proto == "tcp" || resp.Proto == "udp" {
		stop.Name = fmt.Sprintf("%s:%d", resp.Proto, resp.PublicPort)
	}
	if !o.JSON {
		to := resp.Upstream
		if to == "" {
			to = fmt.Sprintf("127.0.0.1:%d", resp.Port)
		}
		fmt.Fprintf(f.ErrOut, "forwarding %s -> %s; Ctrl-C to stop\n", resp.URL, to)
	}
	// Watch the request log until Ctrl-C (ctx done), the daemon going
	// away, or the route disappearing (beam expose stop, an admin, the
	// device leaving the network): then this command has nothing left to
	// forward and says so.
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	gone := make(chan string, 1)
	go func() {
		defer wcancel()
		if reason, err := lc.WaitRouteGone(wctx, route); err == nil && reason != "" {
			gone <- reason
		}
	}()
	werr := lc.WatchRequests(wctx, func(l apitype.RequestLog) {
		if l.Port != resp.Port || !logForHost(l.Host, resp.Host) {
			return
		}
		if o.JSON {
			json.NewEncoder(f.Out).Encode(l)
			return
		}
		if l.Edge {
			fmt.Fprintf(f.Out, "%s %-7s %-40s %d refused at the edge (%s)\n", l.Time.Format("15:04:05"), l.Method, l.Path, l.Status, edgeRefusal(l.Status))
			return
		}
		fmt.Fprintf(f.Out, "%s %-7s %-40s %d %s\n", l.Time.Format("15:04:05"), l.Method, l.Path, l.Status, l.Duration.Round(time.Millisecond))
	})
	wcancel()
	select {
	case reason := <-gone:
		return fmt.Errorf("%s is no longer published: %s", resp.URL, reason)
	default:
	}
	// Ctrl-C or the daemon going away: withdraw the route, this one only.
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := lc.ExposeStopRoute(sctx, stop); err != nil {
		return fmt.Errorf("remove route %s: %w", stop.Name, err)
	}
	if !o.JSON {
		fmt.Fprintf(f.ErrOut, "stopped %s\n", resp.URL)
	}
	return werr
}

// edgeRefusal says which policy of the route a status the edge answered
// itself comes from.
func edgeRefusal(status int) string {
	switch status {
	case 401:
		return "no or wrong credentials, --basic-auth"
	case 403:
		return "client address not allowed, --allow-ip/--deny-ip"
	case 429:
		return "too many requests, --rate-limit"
	}
	return "route policy"
}

// logForHost reports whether a request log line with Host header h
// belongs to the route of host (empty host: any).
func logForHost(h, host string) bool {
	if host == "" {
		return true
	}
	if hh, _, err := net.SplitHostPort(h); err == nil {
		h = hh
	}
	return strings.EqualFold(strings.TrimSuffix(h, "."), host)
}

func newCmdExposeList(f *Factory, in *instanceFlags) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List this device's published routes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			routes, err := in.client(f).ExposeList(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(f.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(routes)
			}
			tw := tabwriter.NewWriter(f.Out, 0, 2, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tPROTO\tPUBLIC PORT\tTARGET")
			for _, r := range routes {
				name := r.Host
				if name == "" {
					name = fmt.Sprintf("%s:%d", r.Proto, r.PublicPort)
				}
				pp := "-"
				if r.PublicPort != 0 {
					pp = strconv.Itoa(int(r.PublicPort))
				}
				to := r.Upstream
				if to == "" {
					to = fmt.Sprintf("127.0.0.1:%d", r.Port)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", name, r.Proto, pp, to)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func newCmdExposeStop(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "stop NAME",
		Short: "Withdraw a published route (its host, first label, or tcp:PORT / udp:PORT)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return in.client(f).ExposeStop(cmd.Context(), args[0])
		},
	}
}
