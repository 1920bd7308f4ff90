package cli

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"beam.dev/beam/configs"
	"beam.dev/beam/internal/telemetry"
)

// TelemetryOptions are --metrics-addr and --debug-addr, which every role
// (daemon, coordinator, derp, edge, server) has: the metrics_addr and
// debug_addr keys of its config file.
type TelemetryOptions = configs.Telemetry

const (
	metricsAddrUsage = "serve Prometheus metrics at http://ADDR/metrics, on loopback only (\":9464\" means 127.0.0.1:9464; \"\" disables)"
	debugAddrUsage   = "serve Go's pprof profiles at http://ADDR/debug/pprof/, on loopback only (\"\" disables)"
)

// registerTelemetry adds the flags to fl.
func registerTelemetry(fl *pflag.FlagSet, o *TelemetryOptions) {
	fl.StringVar(&o.MetricsAddr, "metrics-addr", "", metricsAddrUsage)
	fl.StringVar(&o.DebugAddr, "debug-addr", "", debugAddrUsage)
}

// checkTelemetry refuses an address off this machine before the role starts.
func checkTelemetry(o *TelemetryOptions) error {
	for _, f := range []struct{ name, v string }{{"--metrics-addr", o.MetricsAddr}, {"--debug-addr", o.DebugAddr}} {
		if f.v == "" {
			continue
		}
		if _, err := telemetry.LoopbackAddr(f.v); err != nil {
			return fmt.Errorf("%s: %w", f.name, err)
		}
	}
	return nil
}

// roleRegistry returns a registry of its own holding cs: one per role,
// never the global default registry, so roles in one process and tests
// do not collide.
func roleRegistry(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(cs...)
	return reg
}

// startTelemetry serves the union of the process registry and the roles'
// registries on --metrics-addr, and pprof on --debug-addr. guard is the
// process's node's GuardListener, so its peers cannot reach either
// listener; nil for a process without a node. The returned func stops
// both.
func startTelemetry(ctx context.Context, o *TelemetryOptions, logger *slog.Logger, guard telemetry.Guard, roles ...prometheus.Gatherer) (stop func(), err error) {
	var closers []func() error
	stop = func() {
		for _, c := range closers {
			c()
		}
	}
	if o.MetricsAddr != "" {
		gs := append([]prometheus.Gatherer{telemetry.NewProcessRegistry()}, roles...)
		s, err := telemetry.Listen(ctx, "--metrics-addr", o.MetricsAddr, telemetry.MetricsHandler(gs...), guard, logger)
		if err != nil {
			return nil, err
		}
		closers = append(closers, s.Close)
		logger.Info("serving metrics", "url", "http://"+s.Addr().String()+"/metrics")
	}
	if o.DebugAddr != "" {
		s, err := telemetry.Listen(ctx, "--debug-addr", o.DebugAddr, telemetry.PprofHandler(), guard, logger)
		if err != nil {
			stop()
			return nil, err
		}
		closers = append(closers, s.Close)
		logger.Info("serving pprof", "url", "http://"+s.Addr().String()+"/debug/pprof/")
	}
	return stop, nil
}
