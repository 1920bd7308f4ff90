package localapi

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"strconv"

	"beam.dev/beam/localapi/apitype"
)

// Who may use the local API: the daemon's own user and root always; the
// operator (apitype.Prefs.Operator, `beam up --operator USER`) too, where
// the socket gives the peer's credentials (Linux: SO_PEERCRED). Without an
// operator the socket is 0600; with one it is 0666, and every connection
// is checked against the peer's uid at accept (guard.go) and every
// request again. Only the daemon's user and root may change the operator,
// the DNS upstreams, or put a port below 1024 in a setting
// (checkPrefsPatch): the daemon may run as root.

type peerKey struct{}

// peer is what ConnContext learned about a connection's other end.
type peer struct {
	uid   int
	known bool
}

// ConnContext is the http.Server ConnContext of the local API: it records
// the peer's uid for the checks in Handler (as Handler.Listener read it at
// accept, else from c).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if pc, ok := c.(*peerConn); ok {
		return context.WithValue(ctx, peerKey{}, pc.p)
	}
	uid, err := peerUID(c)
	return context.WithValue(ctx, peerKey{}, peer{uid: uid, known: err == nil})
}

func peerOf(r *http.Request) peer {
	p, _ := r.Context().Value(peerKey{}).(peer)
	return p
}

// isOwner reports whether uid is the daemon's own user or root.
func isOwner(uid int) bool { return uid == 0 || uid == os.Geteuid() }

// lookupUID returns the uid of a local user name.
func lookupUID(name string) (int, error) {
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(u.Uid)
}

// checkAccess refuses requests from a peer that is neither the daemon's
// user, root, nor the operator. Peers of unknown identity passed the
// socket's file mode, which then admits only the daemon's user.
func (h *Handler) checkAccess(r *http.Request) error {
	return h.checkPeer(peerOf(r))
}

// checkPeer refuses a peer that is neither the daemon's user, root, nor
// the operator; Handler.Listener asks it at accept, checkAccess again for
// each request (the operator may have changed since).
func (h *Handler) checkPeer(p peer) error {
	if !p.known || isOwner(p.uid) {
		return nil
	}
	if op := h.n.Prefs().Operator; op != "" {
		if uid, err := lookupUID(op); err == nil && uid == p.uid {
			return nil
		}
	}
	name := strconv.Itoa(p.uid)
	if u, err := user.LookupId(name); err == nil {
		name = u.Username + " (uid " + name + ")"
	}
	return fmt.Errorf("user %s may not use this beam daemon; its admin can allow one user with `beam up --operator USER` or `beam set --operator USER`", name)
}

// checkOperatorChange refuses a change of the operator from anyone but the
// daemon's user and root, and where the socket gives no peer credentials.
func (h *Handler) checkOperatorChange(r *http.Request, op *string) error {
	if op == nil {
		return nil
	}
	if p := peerOf(r); p.known && !isOwner(p.uid) {
		return errors.New("only root or the daemon's own user may change the operator")
	}
	if *op != "" && !peerCredSupported {
		return errors.New("an operator needs peer credentials on the local socket, which only Linux gives")
	}
	return nil
}

// privilegedPorts are the ports below which only root may bind. An
// operator must not make a daemon running as root take one for it.
const privilegedPorts = 1024

// checkPrefsPatch refuses, from a peer that is neither root nor the
// daemon's own user (the operator), the settings that would lend it the
// daemon's privileges: changing the operator (checkOperatorChange), the
// DNS upstreams MagicDNS forwards to (in TUN mode the host's resolver),
// and a privileged port for the WireGuard socket, the peer relay server
// or a loopback listener (SOCKS5, HTTP proxy, MagicDNS).
func (h *Handler) checkPrefsPatch(r *http.Request, p *apitype.PrefsPatch) error {
	if p == nil {
		return nil
	}
	if err := h.checkOperatorChange(r, p.Operator); err != nil {
		return err
	}
	if pr := peerOf(r); !pr.known || isOwner(pr.uid) {
		return nil
	}
	if p.DNSUpstreams != nil {
		return errors.New("only root or the daemon's own user may change the DNS upstreams")
	}
	for _, f := range []struct {
		name string
		port *uint16
	}{{"port", p.Port}, {"relay server port", p.RelayServerPort}} {
		if f.port != nil && *f.port != 0 && *f.port < privilegedPorts {
			return fmt.Errorf("only root or the daemon's own user may set the %s below %d (asked for %d)", f.name, privilegedPorts, *f.port)
		}
	}
	for _, f := range []struct {
		name string
		addr *string
	}{{"socks5", p.SOCKS5}, {"http proxy", p.HTTPProxy}, {"dns listen", p.DNSListen}} {
		if f.addr == nil || *f.addr == "" {
			continue
		}
		// A malformed address is refused later with its reason.
		if ap, err := netip.ParseAddrPort(*f.addr); err == nil && ap.Port() != 0 && ap.Port() < privilegedPorts {
			return fmt.Errorf("only root or the daemon's own user may serve the %s on a port below %d (asked for %s)", f.name, privilegedPorts, *f.addr)
		}
	}
	return nil
}

// syncSocketMode makes the socket usable by an operator (0666, with every
// request checked by uid) or by the daemon's user only (0600).
func (h *Handler) syncSocketMode() {
	if h.opts.Socket == "" {
		return
	}
	op := h.n.Prefs().Operator
	mode := os.FileMode(0o600)
	if op != "" && peerCredSupported {
		mode = 0o666
		if fi, err := os.Stat(filepath.Dir(h.opts.Socket)); err == nil && fi.Mode().Perm()&0o001 == 0 {
			h.logger.Warn("the operator cannot reach the socket: its directory is not searchable by other users", "operator", op, "dir", filepath.Dir(h.opts.Socket), "mode", fi.Mode().Perm())
		}
	}
	if err := os.Chmod(h.opts.Socket, mode); err != nil {
		h.logger.Warn("set socket mode", "socket", h.opts.Socket, "err", err)
	}
}
