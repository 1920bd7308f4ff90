package coordclient

import (
	"context"
	"net/http"

	"beam.dev/beam/wire"
)

// RenameNode gives node name ("name", "network/name" or "nodekey:...")
// the name newName, a DNS label unique within its network, and returns
// the renamed node. Its MagicDNS name changes on every peer at once. A
// missing node matches ErrNotFound; a taken name is an *Error with Status
// 409, a name that is not a DNS label one with Status 400.
func (a *Admin) RenameNode(ctx context.Context, name, newName string) (*wire.Node, error) {
	in := wire.RenameNodeRequest{Name: newName}
	var n wire.Node
	if err := a.do(ctx, http.MethodPost, wire.NodeRenamePath(name), in, &n); err != nil {
		return nil, err
	}
	return &n, nil
}
