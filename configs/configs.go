// Package configs holds Beam's configuration files and their typed,
// strictly decoded forms: the settings of each role (Server, Coordinator,
// DERP, Edge, Zone, Daemon; Server is the union beam server runs) that its
// flags and its HuJSON --config file fill, with their defaults
// (DefaultServer, ...) and the Validate every command runs before it
// starts; a beam expose tunnels file (Tunnels); example files for each
// (server.hujson, coordinator.hujson, derp.hujson, edge.hujson,
// daemon.hujson, beam.hujson); the relay map a coordinator hands to nodes
// (derpmap.example.json), the default access policy (policy.hujson) and
// systemd units (systemd/).
//
// LoadFile decodes strictly: an unknown key, a value of the wrong type or
// a key given twice is a *FileError naming the key and its line.
//
// Only package cmd/beam/cli imports configs.
package configs

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"

	"beam.dev/beam/wire"
)

// ParseDERPMap decodes a relay map file (JSON, unknown fields rejected)
// and validates it, returning every problem found.
func ParseDERPMap(b []byte) (*wire.DERPMap, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m wire.DERPMap
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode relay map: %w", err)
	}
	if dec.More() {
		return nil, errors.New("decode relay map: trailing data after the JSON object")
	}
	if err := ValidateDERPMap(&m); err != nil {
		return nil, err
	}
	return &m, nil
}

// ValidateDERPMap checks region IDs, relay URLs and STUN addresses.
func ValidateDERPMap(m *wire.DERPMap) error {
	var errs []error
	if len(m.Regions) == 0 {
		errs = append(errs, errors.New("relay map: no regions"))
	}
	for id, r := range m.Regions {
		if r == nil {
			errs = append(errs, fmt.Errorf("region %d: empty", id))
			continue
		}
		if id <= 0 || r.RegionID != id {
			errs = append(errs, fmt.Errorf("region %d: region_id %d must be positive and equal its key", id, r.RegionID))
		}
		if len(r.Nodes) == 0 {
			errs = append(errs, fmt.Errorf("region %d: no nodes", id))
		}
		for i, n := range r.Nodes {
			if n == nil {
				errs = append(errs, fmt.Errorf("region %d node %d: empty", id, i))
				continue
			}
			if n.RegionID != 0 && n.RegionID != id {
				errs = append(errs, fmt.Errorf("region %d node %q: region_id %d differs", id, n.Name, n.RegionID))
			}
			if !n.STUNOnly {
				u, err := url.Parse(n.URL)
				if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" {
					errs = append(errs, fmt.Errorf("region %d node %q: url %q: want http(s)://host[:port]", id, n.Name, n.URL))
				}
			}
			if n.STUNAddr != "" {
				if _, _, err := net.SplitHostPort(n.STUNAddr); err != nil {
					errs = append(errs, fmt.Errorf("region %d node %q: stun_addr %q: want host:port", id, n.Name, n.STUNAddr))
				}
			}
			if n.STUNOnly && n.STUNAddr == "" {
				errs = append(errs, fmt.Errorf("region %d node %q: stun_only needs stun_addr", id, n.Name))
			}
		}
	}
	return errors.Join(errs...)
}
