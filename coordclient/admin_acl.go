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

// CreateUser adds a user.
func (a *Admin) CreateUser(ctx context.Context, name string) (*wire.User, error) {
	var u wire.User
	if err := a.do(ctx, http.MethodPost, wire.PathUsers, wire.CreateUserRequest{Name: name}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// ListUsers lists users sorted by name.
func (a *Admin) ListUsers(ctx context.Context) ([]*wire.User, error) {
	var out []*wire.User
	return out, a.do(ctx, http.MethodGet, wire.PathUsers, nil, &out)
}

// DeleteUser deletes a user; it fails while nodes, auth keys or the policy
// name the user.
func (a *Admin) DeleteUser(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodDelete, wire.UserPath(name), nil, nil)
}

// DeleteUserAndNodes deletes a user with their nodes and auth keys; it
// fails while the policy names the user.
func (a *Admin) DeleteUserAndNodes(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodDelete, wire.UserPath(name)+"?nodes=delete", nil, nil)
}

// PolicyError is the coordinator's refusal of a policy.
type PolicyError struct {
	Problems []wire.PolicyProblem
}

func (e *PolicyError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.String()
	}
	return "policy refused: " + strings.Join(parts, "; ")
}

// GetPolicy returns the text of the policy in force.
func (a *Admin) GetPolicy(ctx context.Context) ([]byte, error) {
	return a.policyRequest(ctx, http.MethodGet, wire.PathPolicy, nil)
}

// SetPolicy replaces the policy. A policy that does not parse, names
// unknown users or fails its tests is refused with a *PolicyError.
func (a *Admin) SetPolicy(ctx context.Context, src []byte) error {
	_, err := a.policyRequest(ctx, http.MethodPut, wire.PathPolicy, src)
	return err
}

// CheckPolicy reports what SetPolicy would say about src, without
// applying it: nil or a *PolicyError.
func (a *Admin) CheckPolicy(ctx context.Context, src []byte) error {
	_, err := a.policyRequest(ctx, http.MethodPost, wire.PathPolicyCheck, src)
	return err
}

// policyRequest sends a policy text and returns the answer's body.
func (a *Admin) policyRequest(ctx context.Context, method, path string, src []byte) ([]byte, error) {
	resp, err := a.send(ctx, method, path, src, "application/hujson")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	if err != nil {
		return nil, fmt.Errorf("%w: read answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode/100 == 2 {
		return b, nil
	}
	var pb wire.PolicyErrorBody
	if resp.StatusCode == http.StatusBadRequest && json.Unmarshal(b, &pb) == nil && pb.Code == wire.CodeBadPolicy && len(pb.Problems) > 0 {
		return nil, &PolicyError{Problems: pb.Problems}
	}
	return nil, errorFromBody(resp.StatusCode, b)
}

// SetNodeExpiry sets when node name's key expires: d from now, or never
// for d <= 0.
func (a *Admin) SetNodeExpiry(ctx context.Context, name string, d time.Duration) (*wire.Node, error) {
	in := wire.SetExpiryRequest{Expiry: "never"}
	if d > 0 {
		in.Expiry = d.String()
	}
	var n wire.Node
	if err := a.do(ctx, http.MethodPut, wire.NodeExpiryPath(name), in, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// ListPending lists the nodes waiting for approval.
func (a *Admin) ListPending(ctx context.Context) ([]*wire.PendingRegistration, error) {
	var out []*wire.PendingRegistration
	return out, a.do(ctx, http.MethodGet, wire.PathRegistrations, nil, &out)
}

// Approve admits the node waiting with code, owned by user or carrying
// tags (or neither).
func (a *Admin) Approve(ctx context.Context, code, user string, tags []string) error {
	in := wire.ApproveRequest{User: user, Tags: tags}
	return a.do(ctx, http.MethodPost, wire.RegistrationApprovePath(code), in, nil)
}

// Audit returns the newest limit audit entries, newest first (limit <= 0
// means the coordinator's default of 100).
func (a *Admin) Audit(ctx context.Context, limit int) ([]*wire.AuditEntry, error) {
	path := wire.PathAudit
	if limit > 0 {
		path += fmt.Sprintf("?limit=%d", limit)
	}
	var out []*wire.AuditEntry
	return out, a.do(ctx, http.MethodGet, path, nil, &out)
}
