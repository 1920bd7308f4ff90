package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"beam.dev/beam/coordclient"
	"beam.dev/beam/coordinator/console"
)

func newCmdAdminConsole(f *Factory, a *adminFlags) *cobra.Command {
	var open bool
	var expiry time.Duration
	cmd := &cobra.Command{
		Use:   "console",
		Short: "Print a one-time link that signs in to the web console",
		Long: `Print a link that signs a browser in to the coordinator's web console.

The link works once, within --expiry (a minute by default), and only on the
coordinator that made it: one that restarts forgets it. Over plain HTTP it
works only in a browser on the coordinator's machine.

beam admin finds the coordinator as for every admin command. On the
coordinator's host it first checks that the server at the URL the
coordinator wrote down proves it holds the coordinator's machine key; only
then does it send the admin token and print a link. A console URL copied
from the coordinator's output has no such check: after the coordinator
stopped, any program may listen on its port and show a sign-in page.`,
		Example: `  beam admin console
  beam admin console --open`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if expiry < time.Second || expiry > console.MaxSignInLinkTTL {
				return fmt.Errorf("--expiry %v: want 1s to %v", expiry, console.MaxSignInLinkTTL)
			}
			server, token, err := a.target(f)
			if err != nil {
				return err
			}
			link, err := askSignInLink(ctxOf(cmd), server, token, expiry)
			if err != nil {
				return err
			}
			fmt.Fprintln(f.Out, link)
			fmt.Fprintf(f.ErrOut, "This link signs in to the web console once, within %v.\n", expiry)
			if open {
				openBrowser(link)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&open, "open", false, "also open the link in the desktop's browser (xdg-open)")
	cmd.Flags().DurationVar(&expiry, "expiry", console.DefaultSignInLinkTTL, "how long the link works if unused (at most 10m)")
	return cmd
}

// askSignInLink asks the coordinator at server (the first of several,
// comma-separated, that answers) for a one-time console sign-in link
// valid for ttl, with the admin token, and returns the link.
func askSignInLink(ctx context.Context, server, token string, ttl time.Duration) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	body, _ := json.Marshal(console.SignInLinkRequest{TTLSeconds: int(ttl / time.Second)})
	var lastErr error
	for u := range strings.SplitSeq(server, ",") {
		base := strings.TrimRight(strings.TrimSpace(u), "/")
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+console.SignInLinkPath, bytes.NewReader(body))
		if err != nil {
			return "", fmt.Errorf("sign-in link: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			lastErr = fmt.Errorf("%w: %w", coordclient.ErrUnreachable, err)
			continue
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		if err != nil {
			lastErr = fmt.Errorf("%w: read answer: %w", coordclient.ErrUnreachable, err)
			continue
		}
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusUnauthorized:
			return "", adminErr(coordclient.ErrUnauthorized)
		case http.StatusNotFound, http.StatusMethodNotAllowed:
			return "", fmt.Errorf("the coordinator at %s makes no sign-in links (an older version?): sign in to %s%s with the admin token", base, base, console.Path)
		case http.StatusTooManyRequests:
			return "", fmt.Errorf("the coordinator at %s refused: too many sign-in attempts from this address; try again in a minute", base)
		default:
			msg, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
			return "", fmt.Errorf("the coordinator at %s refused a sign-in link: %s: %s", base, resp.Status, cell(msg))
		}
		var l console.SignInLink
		if err := json.Unmarshal(b, &l); err != nil || !validSignInPath(l.Path) {
			return "", fmt.Errorf("the coordinator at %s answered the sign-in link request with %q", base, cell(string(b)))
		}
		return base + l.Path, nil
	}
	if lastErr == nil {
		lastErr = errors.New("no coordinator URL")
	}
	return "", adminErr(lastErr)
}

// validSignInPath reports whether p is a sign-in link's path:
// console.Path+"signin/" and a base64url code, nothing a terminal or a
// browser would read as more.
func validSignInPath(p string) bool {
	code, ok := strings.CutPrefix(p, console.Path+"signin/")
	if !ok || code == "" || len(code) > 256 {
		return false
	}
	for _, r := range code {
		if !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}
