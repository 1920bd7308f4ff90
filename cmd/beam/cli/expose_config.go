package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/localapi/apitype"
)

// exposeConfigArgs refuses a TARGET or route flags next to --config: the
// routes and their options are in the file.
func exposeConfigArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return fmt.Errorf("--config publishes the tunnels in the file: give no TARGET (got %q)", args[0])
	}
	var route []string
	cmd.Flags().Visit(func(fl *pflag.Flag) {
		switch {
		case fl.Name == "config", fl.Name == "bg", fl.Name == "json", cmd.InheritedFlags().Lookup(fl.Name) != nil:
		default:
			route = append(route, "--"+fl.Name)
		}
	})
	if len(route) > 0 {
		return fmt.Errorf("with --config, give %v in the file, for each tunnel", route)
	}
	return nil
}

// tunnel is one route of a tunnels file, as beam expose's options.
type tunnel struct {
	label string
	req   apitype.ExposeRequest
}

// loadTunnels reads a tunnels file and turns each tunnel into the request
// beam expose would send for the same flags, checked the same way.
func loadTunnels(path string) ([]tunnel, error) {
	var tf configs.Tunnels
	if _, err := configs.LoadFile(path, &tf); err != nil {
		return nil, err
	}
	if err := tf.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	var out []tunnel
	var errs []error
	for _, label := range tf.Labels() {
		tu := tf.Tunnels[label]
		o := &ExposeOptions{
			Name: tu.Name, Domain: tu.Domain, TCP: tu.TCP, UDP: tu.UDP, TLSPassthrough: tu.TLSPassthrough,
			BasicAuth: tu.BasicAuth, AllowIP: tu.AllowIP, DenyIP: tu.DenyIP, RateLimit: tu.RateLimit,
			HeaderAdd: tu.HeaderAdd, HeaderRemove: tu.HeaderRemove, CORS: tu.CORS, ProxyProtocol: tu.ProxyProtocol,
			Pool: tu.Pool, Inspect: tu.Inspect == nil || *tu.Inspect,
		}
		if o.Name == "" && !o.TCP && !o.UDP {
			o.Name = label
		}
		target := tu.Target
		if target == "" {
			target = strconv.Itoa(int(tu.Port))
		}
		var err error
		if o.Port, o.Upstream, err = parseTarget(target); err == nil {
			var req apitype.ExposeRequest
			if req, err = o.exposeRequest(); err == nil {
				out = append(out, tunnel{label: label, req: req})
				continue
			}
		}
		errs = append(errs, fmt.Errorf("tunnel %q: %w", label, err))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return out, nil
}

// exposedTunnel is what beam expose --config --json prints per tunnel.
type exposedTunnel struct {
	Tunnel string `json:"tunnel"`
	apitype.ExposeResponse
}

// runExposeConfig publishes every tunnel of o.ConfigFile, prints each
// URL and, unless --bg, follows their requests until Ctrl-C, then
// withdraws them all. If one tunnel is refused, those already published
// are withdrawn and nothing stays half done.
func runExposeConfig(ctx context.Context, f *Factory, in *instanceFlags, o *ExposeOptions) error {
	tunnels, err := loadTunnels(o.ConfigFile)
	if err != nil {
		return err
	}
	lc := in.client(f)
	var published []apitype.ExposeResponse
	withdraw := func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var errs []error
		for _, r := range published {
			stop := routeStop(r)
			if err := lc.ExposeStopRoute(sctx, stop); err != nil {
				errs = append(errs, fmt.Errorf("remove route %s: %w", stop.Name, err))
			}
		}
		return errors.Join(errs...)
	}
	labels := map[routeKey]string{}
	for _, t := range tunnels {
		resp, err := lc.Expose(ctx, t.req)
		if err != nil {
			return errors.Join(fmt.Errorf("tunnel %q: %w", t.label, err), withdraw())
		}
		published = append(published, *resp)
		labels[routeKey{resp.Host, resp.Port}] = t.label
		if o.JSON {
			json.NewEncoder(f.Out).Encode(exposedTunnel{Tunnel: t.label, ExposeResponse: *resp})
			continue
		}
		to := resp.Upstream
		if to == "" {
			to = fmt.Sprintf("127.0.0.1:%d", resp.Port)
		}
		fmt.Fprintf(f.Out, "%-12s %s -> %s\n", t.label, resp.URL, to)
		if resp.Warning != "" {
			fmt.Fprintf(f.ErrOut, "warning: %s: %s\n", t.label, resp.Warning)
		}
		if h := loopbackHint(resp.URL); h != "" {
			fmt.Fprintf(f.ErrOut, "%s: %s\n", t.label, h)
		}
	}
	if o.Background {
		return nil
	}
	if !o.JSON {
		fmt.Fprintf(f.ErrOut, "%d tunnels published; Ctrl-C to stop\n", len(published))
	}
	werr := lc.WatchRequests(ctx, func(l apitype.RequestLog) {
		label := ""
		for k, v := range labels {
			if k.port == l.Port && logForHost(l.Host, k.host) {
				label = v
			}
		}
		if label == "" {
			return
		}
		if o.JSON {
			json.NewEncoder(f.Out).Encode(struct {
				Tunnel string `json:"tunnel"`
				apitype.RequestLog
			}{label, l})
			return
		}
		fmt.Fprintf(f.Out, "%s %-12s %-7s %-40s %d %s\n", l.Time.Format("15:04:05"), label, l.Method, l.Path, l.Status, l.Duration.Round(time.Millisecond))
	})
	if err := withdraw(); err != nil {
		return err
	}
	if !o.JSON {
		fmt.Fprintf(f.ErrOut, "stopped %d tunnels\n", len(published))
	}
	if ctx.Err() != nil {
		return nil
	}
	return werr
}

// routeKey finds a request log line's route.
type routeKey struct {
	host string
	port uint16
}

// routeStop returns the request that withdraws the route r, this one only.
func routeStop(r apitype.ExposeResponse) apitype.ExposeStopRequest {
	stop := apitype.ExposeStopRequest{Name: r.Host, Proto: r.Proto}
	if r.Proto == "tcp" || r.Proto == "udp" {
		stop.Name = fmt.Sprintf("%s:%d", r.Proto, r.PublicPort)
	}
	return stop
}
