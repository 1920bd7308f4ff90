package coordinator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"beam.dev/beam/wire"
)

// Admin API for renaming nodes (bearer token):
//
//	POST /api/v1/nodes/{name}/rename   wire.RenameNodeRequest -> wire.Node (the renamed node)
//
// 400 for a name that is not a DNS label, 404 for no such node, 409 for a
// name taken in the node's network, 501 when the Store cannot rename.

// NodeRenamer renames nodes. A Store that implements it enables
// RenameNode; beam.dev/beam/coordinator/sqlstore does.
type NodeRenamer interface {
	// RenameNode sets the name of the node with the given ID. A name taken
	// by another node of the same network fails with ErrConflict, a node
	// that does not exist with ErrNotFound.
	RenameNode(ctx context.Context, id wire.NodeID, name string) error
}

// RenameNode gives node ref ("name", "network/name" or "nodekey:...") the
// name newName, so its MagicDNS name becomes NEWNAME.<network domain>. The
// node and every peer that sees it get the change at once. newName must be
// a DNS label (it is lower-cased first) not used by another node of the
// network; errors wrap ErrInvalid, ErrNotFound or ErrConflict. Renaming a
// node to its own name changes nothing. It returns the node as it is now.
//
// A renamed node keeps its name when it rejoins with the same hostname;
// its hostname is not changed. A node that rejoins with a new hostname
// asks for the name that hostname gives, and gets it when it is free
// (see wire.RegisterRequest.Hostname). Public edge routes it claimed keep
// their names.
func (s *Server) RenameNode(ctx context.Context, ref, newName string) (*wire.Node, error) {
	return s.reg.renameNode(ctx, actorAdmin, ref, newName)
}

func (rg *registry) renameNode(ctx context.Context, actor, ref, newName string) (*wire.Node, error) {
	// rg.mu: registration picks free names.
	rg.mu.Lock()
	defer rg.mu.Unlock()
	return rg.renameNodeRegLocked(ctx, actor, ref, newName)
}

// renameNodeRegLocked is renameNode with rg.mu held by the caller
// (register, when a rejoining node's hostname changed).
func (rg *registry) renameNodeRegLocked(ctx context.Context, actor, ref, newName string) (*wire.Node, error) {
	s := rg.core
	name := strings.ToLower(strings.TrimSpace(newName))
	if !isLabel(name) {
		return nil, fmt.Errorf("%w: node name %q must be a DNS label: 1 to 63 of a-z, 0-9 and '-', not starting or ending with '-'", ErrInvalid, newName)
	}
	renamer, ok := s.store.(NodeRenamer)
	if !ok {
		return nil, errorf(http.StatusNotImplemented, wire.CodeInternal, "the coordinator's store cannot rename nodes")
	}

	// persistMu: the store write and the in-memory change happen in the
	// same order for every writer.
	s.persistMu.Lock()
	defer s.persistMu.Unlock()

	s.mu.Lock()
	e, err := s.findNodeLocked(ref)
	if err != nil {
		s.mu.Unlock()
		return nil, err
	}
	oldName, id, networkID, nk := e.rec.Node.Name, e.rec.Node.ID, e.rec.NetworkID, e.rec.Node.Key
	if oldName == name {
		view := s.viewLocked(e)
		s.mu.Unlock()
		return view, nil
	}
	for _, o := range s.nodes {
		if o != e && o.rec.NetworkID == networkID && o.rec.Node.Name == name {
			s.mu.Unlock()
			return nil, fmt.Errorf("%w: node name %q is taken in this network", ErrConflict, name)
		}
	}
	network := s.networks[networkID]
	s.mu.Unlock()
	if network == nil {
		return nil, fmt.Errorf("%w: the network of node %q", ErrNotFound, ref)
	}

	if err := renamer.RenameNode(ctx, id, name); err != nil {
		if errors.Is(err, ErrConflict) || errors.Is(err, ErrNotFound) {
			return nil, err
		}
		return nil, fmt.Errorf("coordinator: rename node: %w", err)
	}

	s.mu.Lock()
	e = s.nodes[nk]
	if e == nil {
		s.mu.Unlock()
		return nil, fmt.Errorf("%w: node %q was removed", ErrNotFound, ref)
	}
	e.rec.Node.Name = name
	e.rec.Node.DNSName = name + "." + network.Domain + "."
	s.notifyLocked(networkID, nk)
	view := s.viewLocked(e)
	s.mu.Unlock()

	s.audit(ctx, actor, "node.rename", oldName, "new name "+name)
	s.logger.Info("node renamed", "node", nk.ShortString(), "from", oldName, "to", name)
	return view, nil
}
