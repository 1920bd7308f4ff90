package sqlstore

import (
	"context"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/wire"
)

var _ coordinator.NodeRenamer = (*Store)(nil)

// RenameNode implements coordinator.NodeRenamer. The schema's
// UNIQUE (network_id, name) turns a taken name into ErrConflict.
func (s *Store) RenameNode(ctx context.Context, id wire.NodeID, name string) error {
	res, err := s.db.ExecContext(ctx, s.d.rebind(`UPDATE nodes SET name = ? WHERE id = ?`), name, int64(id))
	return s.affected("rename node", res, err, coordinator.ErrNotFound)
}
