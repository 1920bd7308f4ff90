package localclient

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"beam.dev/beam/localapi/apitype"
)

// Metrics returns the daemon's metrics in Prometheus's text format.
func (c *Client) Metrics(ctx context.Context) ([]byte, error) {
	const path = "/localapi/v0/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://local"+path, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/plain")
	hc := c.httpClient()
	defer hc.CloseIdleConnections()
	resp, err := hc.Do(req)
	if err != nil {
		return nil, c.transportErr(path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read metrics: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		var e apitype.Error
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, &Error{Status: resp.StatusCode, Detail: e.Error, Message: e.Message}
		}
		return nil, fmt.Errorf("local API %s: %s", path, resp.Status)
	}
	return b, nil
}
