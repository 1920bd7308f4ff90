package cli

import (
	"strings"

	"beam.dev/beam/localapi/apitype"
)

// portMappingLine is beam netcheck's PortMapping line: the protocols the
// gateway offers and the mapping held, or why nothing was asked.
func portMappingLine(pm *apitype.PortMapping) string {
	switch {
	case pm == nil:
		return "not asked (the daemon runs without --port-mapping)"
	case pm.Gateway == "":
		return "no gateway"
	}
	s := "none"
	if len(pm.Protocols) > 0 {
		s = strings.Join(pm.Protocols, ", ")
	}
	s += " (gateway " + pm.Gateway
	if pm.Mapped != "" {
		s += "; mapped " + pm.Mapped + " by " + pm.Protocol
	}
	return s + ")"
}
