package coordclient

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"beam.dev/beam/wire"
)

// User is a user of the coordinator.
type User struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
}

// CreateUser adds a user.
func (a *Admin) CreateUser(ctx context.Context, name string) (*User, error) {
	var u User
	if err := a.do(ctx, http.MethodPost, "/api/v1/users", map[string]string{"name": name}, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// ListUsers lists users sorted by name.
func (a *Admin) ListUsers(ctx context.Context) ([]*User, error) {
	var out []*User
	return out, a.do(ctx, http.MethodGet, "/api/v1/users", nil, &out)
}

// DeleteUser deletes a user; it fails while nodes, auth keys or the policy
// name the user.
func (a *Admin) DeleteUser(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodDelete, "/api/v1/users/"+url.PathEscape(name), nil, nil)
}

// DeleteUserAndNodes deletes a user with their nodes and auth keys; it
// fails while the policy names the user.
func (a *Admin) DeleteUserAndNodes(ctx context.Context, name string) error {
	return a.do(ctx, http.MethodDelete, "/api/v1/users/"+url.PathEscape(name)+"?nodes=delete", nil, nil)
}

// PolicyProblem is one problem the coordinator found in a policy.
type PolicyProblem struct {
	// Line and Column locate it (1-based); zero when unknown.
	Line   int `json:"line,omitempty"`
	Column int `json:"column,omitempty"`
	// Message says what is wrong.
	Message string `json:"message"`
	// TestFailed is set when an entry of the policy's tests did not hold.
	TestFailed bool `json:"test_failed,omitempty"`
}

// String formats p as "line:column: message".
func (p PolicyProblem) String() string {
	if p.Line == 0 {
		return p.Message
	}
	return fmt.Sprintf("%d:%d: %s", p.Line, p.Column, p.Message)
}

// PolicyError is the coordinator's refusal of a policy.
type PolicyError struct {
	Problems []PolicyProblem
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
	return a.policyRequest(ctx, http.MethodGet, "/api/v1/policy", nil)
}

// SetPolicy replaces the policy. A policy that does not parse, names
// unknown users or fails its tests is refused with a *PolicyError.
func (a *Admin) SetPolicy(ctx context.Context, src []byte) error {
	_, err := a.policyRequest(ctx, http.MethodPut, "/api/v1/policy", src)
	return err
}

// CheckPolicy reports what SetPolicy would say about src, without
// applying it: nil or a *PolicyError.
func (a *Admin) CheckPolicy(ctx context.Context, src []byte) error {
	_, err := a.policyRequest(ctx, http.MethodPost, "/api/v1/policy/check", src)
	return err
}

// policyRequest sends a policy text and returns the answer's body.
func (a *Admin) policyRequest(ctx context.Context, method, path string, src []byte) ([]byte, error) {
	var body io.Reader
	if src != nil {
		body = bytes.NewReader(src)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.base+path, body)
	if err != nil {
		return nil, fmt.Errorf("coordclient: %s %s: %w", method, path, err)
	}
	req.Header.Set("Authorization", "Bearer "+a.token)
	if src != nil {
		req.Header.Set("Content-Type", "application/hujson")
	}
	resp, err := a.hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseSize))
	if err != nil {
		return nil, fmt.Errorf("%w: read answer: %w", ErrUnreachable, err)
	}
	if resp.StatusCode/100 == 2 {
		return b, nil
	}
	var pb struct {
		Code     wire.ErrorCode  `json:"code"`
		Problems []PolicyProblem `json:"problems"`
	}
	if resp.StatusCode == http.StatusBadRequest && json.Unmarshal(b, &pb) == nil && pb.Code == wire.CodeBadPolicy && len(pb.Problems) > 0 {
		return nil, &PolicyError{Problems: pb.Problems}
	}
	return nil, errorFromBody(resp.StatusCode, b)
}

// SetNodeExpiry sets when node name's key expires: d from now, or never
// for d <= 0.
func (a *Admin) SetNodeExpiry(ctx context.Context, name string, d time.Duration) (*wire.Node, error) {
	in := map[string]string{"expiry": "never"}
	if d > 0 {
		in["expiry"] = d.String()
	}
	var n wire.Node
	if err := a.do(ctx, http.MethodPut, "/api/v1/nodes/"+url.PathEscape(name)+"/expiry", in, &n); err != nil {
		return nil, err
	}
	return &n, nil
}

// PendingRegistration is a node waiting for interactive approval.
type PendingRegistration struct {
	Code     string    `json:"code"`
	NodeKey  string    `json:"node_key"`
	Hostname string    `json:"hostname"`
	OS       string    `json:"os,omitempty"`
	Created  time.Time `json:"created"`
	Expires  time.Time `json:"expires"`
}

// ListPending lists the nodes waiting for approval.
func (a *Admin) ListPending(ctx context.Context) ([]*PendingRegistration, error) {
	var out []*PendingRegistration
	return out, a.do(ctx, http.MethodGet, "/api/v1/registrations", nil, &out)
}

// Approve admits the node waiting with code, owned by user or carrying
// tags (or neither).
func (a *Admin) Approve(ctx context.Context, code, user string, tags []string) error {
	in := struct {
		User string   `json:"user,omitempty"`
		Tags []string `json:"tags,omitempty"`
	}{user, tags}
	return a.do(ctx, http.MethodPost, "/api/v1/registrations/"+url.PathEscape(code)+"/approve", in, nil)
}

// AuditEntry is one record of the coordinator's audit log.
type AuditEntry struct {
	ID     int64     `json:"id"`
	Time   time.Time `json:"time"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Target string    `json:"target,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// Audit returns the newest limit audit entries, newest first (limit <= 0
// means the coordinator's default of 100).
func (a *Admin) Audit(ctx context.Context, limit int) ([]*AuditEntry, error) {
	path := "/api/v1/audit"
	if limit > 0 {
		path += fmt.Sprintf("?limit=%d", limit)
	}
	var out []*AuditEntry
	return out, a.do(ctx, http.MethodGet, path, nil, &out)
}
