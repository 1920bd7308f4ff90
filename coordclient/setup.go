package coordclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"beam.dev/beam/wire"
)

// ServerSetup asks the coordinator at serverURL for its public server's
// setup (GET wire.PathServerSetup). No key or token is needed; with
// adminToken (the coordinator's admin token; "" for none) the answer also
// carries how the certificate's ACME order went (wire.CertStatus's CA,
// Orders, Problem, Error and Changed), which the coordinator tells only
// its admin. A nil hc means a client with a 30 second timeout. A
// coordinator without a setup answers an *Error with Status 404.
func ServerSetup(ctx context.Context, serverURL, adminToken string, hc *http.Client) (*wire.ServerSetup, error) {
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(serverURL, "/")+wire.PathServerSetup, nil)
	if err != nil {
		return nil, fmt.Errorf("coordclient: server setup: %w", err)
	}
	if adminToken != "" {
		req.Header.Set("Authorization", "Bearer "+adminToken)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	if err != nil {
		return nil, fmt.Errorf("%w: read answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errorFromBody(resp.StatusCode, b)
	}
	var s wire.ServerSetup
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadResponse, err)
	}
	return &s, nil
}
