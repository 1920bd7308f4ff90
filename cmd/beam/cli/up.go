package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/localapi/apitype"
	"beam.dev/beam/localclient"
)

// UpOptions are the flags of beam up.
type UpOptions struct {
	Coordinator string
	AuthKey     string
	Hostname    string
	ShieldsUp   bool
	ForceReauth bool
	JSON        bool
	Timeout     time.Duration
	Daemon      DaemonOptions

	shieldsUpSet bool
}

// NewCmdUp returns the beam up command.
func NewCmdUp(f *Factory, in *instanceFlags, runF func(*UpOptions) error) *cobra.Command {
	o := &UpOptions{}
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Join the mesh (starting the daemon if none runs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.shieldsUpSet = cmd.Flags().Changed("shields-up")
			o.Daemon.Socket, o.Daemon.StateDir = in.socketPath(f), in.stateDir(f)
			if o.AuthKey == "" {
				o.AuthKey = f.getenv("BEAM_AUTHKEY")
			}
			if o.Coordinator == "" {
				o.Coordinator = f.getenv("BEAM_COORDINATOR")
			}
			if runF != nil {
				return runF(o)
			}
			return runUp(cmd.Context(), f, in, o)
		},
	}
	cmd.Flags().StringVar(&o.Coordinator, "coordinator", "", "coordinator URL (env BEAM_COORDINATOR; default: the stored one)")
	cmd.Flags().StringVar(&o.AuthKey, "authkey", "", "auth key to register with (env BEAM_AUTHKEY)")
	cmd.Flags().StringVar(&o.Hostname, "hostname", "", "name to register (default: the host's name)")
	cmd.Flags().BoolVar(&o.ShieldsUp, "shields-up", false, "refuse all inbound connections from peers")
	cmd.Flags().BoolVar(&o.ForceReauth, "force-reauth", false, "register again even if a node key is stored")
	cmd.Flags().BoolVar(&o.JSON, "json", false, "print the result as JSON")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 10*time.Minute, "how long to wait for the mesh (and for approval of a node without an auth key)")
	daemonFlags(cmd, &o.Daemon)
	return cmd
}

func runUp(ctx context.Context, f *Factory, in *instanceFlags, o *UpOptions) error {
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	lc := in.client(f)
	if !lc.Alive(ctx) {
		if err := startDaemon(ctx, lc, o); err != nil {
			return err
		}
	}
	req := apitype.UpRequest{
		Coordinator: o.Coordinator,
		AuthKey:     o.AuthKey,
		Hostname:    o.Hostname,
		ForceReauth: o.ForceReauth,
	}
	if o.shieldsUpSet {
		req.ShieldsUp = &o.ShieldsUp
	}
	// While the daemon registers, show an approval code if the
	// coordinator asks for one.
	waitCtx, stopWait := context.WithCancel(ctx)
	waitDone := make(chan struct{})
	go func() {
		defer close(waitDone)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-waitCtx.Done():
				return
			case <-tick.C:
			}
			st, err := lc.Status(waitCtx)
			if err == nil && st.AuthCode != "" {
				fmt.Fprintf(f.ErrOut, "This node needs approval. Ask an admin to run:\n\n\tbeam admin nodes approve %s\n\nor open %s\nWaiting...\n", st.AuthCode, st.AuthURL)
				return
			}
		}
	}()
	resp, err := lc.Up(ctx, req)
	stopWait()
	<-waitDone
	if err != nil {
		return err
	}
	if o.JSON {
		enc := json.NewEncoder(f.Out)
		enc.SetIndent("", "  ")
		return enc.Encode(resp)
	}
	if resp.NameChanged {
		fmt.Fprintf(f.ErrOut, "note: the name %q was taken; this node is %q\n", o.Hostname, resp.Name)
	}
	ips := make([]string, len(resp.IPs))
	for i, ip := range resp.IPs {
		ips[i] = ip.String()
	}
	fmt.Fprintf(f.Out, "%s %s\n", resp.Name, strings.Join(ips, " "))
	return nil
}

// startDaemon runs `beam daemon` detached, logging to STATE/beam.log, and
// waits until it answers on the socket.
func startDaemon(ctx context.Context, lc *localclient.Client, o *UpOptions) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find beam binary: %w", err)
	}
	if err := os.MkdirAll(o.Daemon.StateDir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	logPath := filepath.Join(o.Daemon.StateDir, "beam.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("open daemon log: %w", err)
	}
	defer logf.Close()
	args := []string{"--socket", o.Daemon.Socket, "--state", o.Daemon.StateDir, "daemon",
		"--port", strconv.Itoa(int(o.Daemon.Port)), "--log-level", o.Daemon.LogLevel}
	for flag, v := range map[string]string{"--socks5": o.Daemon.SOCKS5, "--http-proxy": o.Daemon.HTTPProxy, "--dns-listen": o.Daemon.DNSListen, "--hostname": o.Hostname,
		"--acme-ca": o.Daemon.ACMECA, "--acme-ca-root": o.Daemon.ACMECARoot, "--acme-email": o.Daemon.ACMEEmail} {
		if v != "" {
			args = append(args, flag, v)
		}
	}
	for _, u := range o.Daemon.DNSUpstreams {
		args = append(args, "--dns-upstream", u)
	}
	cmd := exec.Command(exe, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = detachAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start daemon: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("daemon exited at start (%v); see %s", err, logPath)
		case <-ctx.Done():
			return errors.New("daemon did not start in time; see " + logPath)
		case <-tick.C:
			if lc.Alive(ctx) {
				return nil
			}
		}
	}
}

// NewCmdDown returns the beam down command.
func NewCmdDown(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Leave the mesh but keep this node's identity",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return in.client(f).Down(cmd.Context())
		},
	}
}

// NewCmdLogout returns the beam logout command.
func NewCmdLogout(f *Factory, in *instanceFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "logout",
		Short: "Deregister this node from the coordinator and forget its key",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return in.client(f).Logout(cmd.Context())
		},
	}
}
