package nslab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
)

// Host is a network namespace of a [Lab] with one interface (eth0) and a
// default route: a public host on the internet bridge, or a host behind a
// [Router]. A [Router] is a Host too: its namespace (interfaces wan0 and
// lan0) and its WAN address.
type Host struct {
	lab    *Lab
	name   string
	ns     string
	addr   netip.Addr
	addr6  netip.Addr // global IPv6 address; invalid without Lab.EnableIPv6
	router *Router    // nil for hosts on the internet and for routers
}

// Name returns the name the host was added with.
func (h *Host) Name() string { return h.name }

// Namespace returns the name of the host's network namespace, as used by
// "ip netns exec".
func (h *Host) Namespace() string { return h.ns }

// Addr returns the host's own address: public for hosts on the internet,
// the LAN address for hosts behind a router, the WAN address for a router.
func (h *Host) Addr() netip.Addr { return h.addr }

// Addr6 returns the host's global IPv6 address in a lab with
// [Lab.EnableIPv6] (the WAN address for a router; br0's for the internet
// namespace), and the zero Addr otherwise. Without NAT66 it is also the
// address the internet sees the host's IPv6 traffic come from.
func (h *Host) Addr6() netip.Addr { return h.addr6 }

// PublicAddr returns the address the internet sees the host's traffic come
// from: the router's WAN address for a host behind a router, else Addr.
func (h *Host) PublicAddr() netip.Addr {
	if h.router != nil {
		return h.router.addr
	}
	return h.addr
}

// Router returns the router in front of the host, or nil if the host is on
// the internet (servers, public clients, NATNone hosts, routers).
func (h *Host) Router() *Router { return h.router }

// Command returns a command that runs the program name with args inside the
// host's namespace (through "ip netns exec"). ctx kills it as
// exec.CommandContext does. The caller may set Stdin, Stdout, Env and so on
// before starting it, or pass it to [Host.StartCmd].
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	// "ip netns exec" execs the program in place, so the PID is the
	// program's own and signals reach it directly. There is deliberately
	// no Pdeathsig: Linux sends it when the forking thread exits, which the
	// Go runtime may do at any time. Processes left by a crashed test are
	// killed by the next New instead.
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.ns, name}, args...)...)
	// Programs that keep per-user runtime files (a coordinator's discovery
	// copy) keep them in the lab, not in the user's directories.
	cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+h.lab.runDir)
	return cmd
}

// HelperCommand returns a command that runs the registered helper (see
// [RegisterHelper]) in the host's namespace by re-executing the test binary.
func (h *Host) HelperCommand(ctx context.Context, helper string, args ...string) *exec.Cmd {
	h.lab.t.Helper()
	exe, err := os.Executable()
	if err != nil {
		h.lab.t.Fatalf("nslab: find test binary: %v", err)
	}
	if !helperKnown(helper) {
		h.lab.t.Fatalf("nslab: helper %q is not registered (see nslab.RegisterHelper)", helper)
	}
	enc, err := json.Marshal(args)
	if err != nil {
		h.lab.t.Fatalf("nslab: encode helper args: %v", err)
	}
	cmd := h.Command(ctx, exe, "-test.run=^TestNSLabHelperProcess$", "-test.count=1")
	// A race-enabled binary sleeps a second at exit by default, which
	// would make every short helper slow.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(cmd.Env, envHelper+"="+helper, envHelperArgs+"="+string(enc), "GORACE="+gorace)
	return cmd
}

// Start starts the program name with args in the host's namespace as a
// long-running [Proc] and registers it with the lab, which stops it at
// cleanup. Cancelling ctx sends it SIGTERM, then SIGKILL 5 s later.
func (h *Host) Start(ctx context.Context, name string, args ...string) *Proc {
	h.lab.t.Helper()
	return h.StartCmd(h.Command(ctx, name, args...))
}

// StartHelper starts a registered helper in the host's namespace as a
// [Proc]; see [Host.Start] and [RegisterHelper].
func (h *Host) StartHelper(ctx context.Context, helper string, args ...string) *Proc {
	h.lab.t.Helper()
	return h.StartCmd(h.HelperCommand(ctx, helper, args...))
}

// StartCmd starts cmd, made by [Host.Command] or [Host.HelperCommand], as a
// [Proc] that the lab stops at cleanup. cmd.Stdout and cmd.Stderr must be
// nil: the Proc captures them.
func (h *Host) StartCmd(cmd *exec.Cmd) *Proc {
	h.lab.t.Helper()
	p, err := startProc(h.name, cmd)
	if err != nil {
		h.lab.t.Fatalf("nslab: %s: %v", h.name, err)
	}
	if err := h.lab.track(p); err != nil {
		p.Stop()
		h.lab.t.Fatalf("nslab: %s: %v", h.name, err)
	}
	return p
}

// Run runs the program name with args in the host's namespace and returns
// its standard output. A failure's error includes the standard error.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runCmd(h.Command(ctx, name, args...))
}

// RunHelper runs a registered helper in the host's namespace to completion
// and returns its standard output, like [Host.Run].
func (h *Host) RunHelper(ctx context.Context, helper string, args ...string) ([]byte, error) {
	h.lab.t.Helper()
	return runCmd(h.HelperCommand(ctx, helper, args...))
}

func runCmd(cmd *exec.Cmd) ([]byte, error) {
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", cmd.Args, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
