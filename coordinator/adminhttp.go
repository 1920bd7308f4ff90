package coordinator

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"beam.dev/beam/wire"
)

// adminAPI is the admin HTTP API, mounted under wire.PathAdminPrefix: it
// admits a request with the admin bearer token (or what
// Options.AdminAuth admits) and turns it into a call of the Server's
// exported methods, which the console calls directly. wire/paths.go lists
// its endpoints with their bodies. The access policy's endpoints
// (wire.PathPolicy, wire.PathPolicyCheck) are registered by the access
// job (acl.go).
//
// Its fields are set in New and not changed after, but for the token's
// hash, which SetAdminToken swaps.
type adminAPI struct {
	core *Server
	// tokenHash holds the SHA-256 of the admin token; nil or empty
	// means none, and then only auth admits anyone.
	tokenHash atomic.Pointer[[]byte]
	auth      func(r *http.Request) (who string, ok bool) // Options.AdminAuth; nil: none
}

// hash returns the admin token's hash, nil if none.
func (a *adminAPI) hash() []byte {
	if h := a.tokenHash.Load(); h != nil && len(*h) > 0 {
		return *h
	}
	return nil
}

// adminWhoKey is the context key of the admin Options.AdminAuth admitted.
type adminWhoKey struct{}

// register adds the admin API's endpoints to mux, the admin mux.
func (a *adminAPI) register(mux *http.ServeMux) {
	mux.HandleFunc("POST "+wire.PathAuthKeys, a.handleCreateAuthKey)
	mux.HandleFunc("GET "+wire.PathAuthKeys, a.handleListAuthKeys)
	mux.HandleFunc("DELETE "+wire.PathAuthKey, a.handleDeleteAuthKey)
	mux.HandleFunc("GET "+wire.PathNodes, a.handleListNodes)
	mux.HandleFunc("DELETE "+wire.PathNode, a.handleRemoveNode)
	mux.HandleFunc("POST "+wire.PathNodeExpire, a.handleExpireNode)
	mux.HandleFunc("POST "+wire.PathNodeRename, a.handleRenameNode)
	mux.HandleFunc("PUT "+wire.PathNodeExpiry, a.handleSetNodeExpiry)
	mux.HandleFunc("POST "+wire.PathUsers, a.handleCreateUser)
	mux.HandleFunc("GET "+wire.PathUsers, a.handleListUsers)
	mux.HandleFunc("DELETE "+wire.PathUser, a.handleDeleteUser)
	mux.HandleFunc("GET "+wire.PathRegistrations, a.handleListPending)
	mux.HandleFunc("POST "+wire.PathRegistrationApprove, a.handleApprove)
	mux.HandleFunc("GET "+wire.PathAudit, a.handleAudit)
	mux.HandleFunc("GET "+wire.PathRoutes, a.handleListRoutes)
	mux.HandleFunc("DELETE "+wire.PathRoute, a.handleRemoveRoutes)
	mux.HandleFunc("POST "+wire.PathDomainVerify, a.handleVerifyDomain)
	mux.HandleFunc("GET "+wire.PathDomains, a.handleListDomains)
	mux.HandleFunc("DELETE "+wire.PathDomain, a.handleRemoveDomain)
	mux.HandleFunc("PUT "+wire.PathDNSTXT, a.handlePutTXT)
	mux.HandleFunc("DELETE "+wire.PathDNSTXT, a.handleDeleteTXT)
	mux.HandleFunc("GET "+wire.PathDNSConfig, a.handleGetDNSConfig)
	mux.HandleFunc("PUT "+wire.PathDNSConfig, a.handlePutDNSConfig)
}

// tokenIs reports whether token is the admin token (never, with none).
func (a *adminAPI) tokenIs(token string) bool {
	h := a.hash()
	if h == nil || token == "" {
		return false
	}
	got := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(got[:], h) == 1
}

// require wraps h so it runs only with the admin bearer token, or what
// Options.AdminAuth admits.
func (a *adminAPI) require(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !bearerIs(r, a.hash()) {
			if a.auth != nil {
				if who, ok := a.auth(r); ok {
					h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), adminWhoKey{}, who)))
					return
				}
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="beam"`)
			writeError(w, errorf(http.StatusUnauthorized, wire.CodeUnauthorized, "missing or wrong admin token"))
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (a *adminAPI) handleCreateAuthKey(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var req wire.CreateAuthKeyRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestSize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed request body"))
		return
	}
	resp, err := s.CreateAuthKeyAs(r.Context(), actorAdmin, req)
	if err != nil {
		s.adminError(w, "create auth key", err)
		return
	}
	writeJSON(w, http.StatusCreated, resp)
}

func (a *adminAPI) handleListAuthKeys(w http.ResponseWriter, r *http.Request) {
	s := a.core
	keys, err := s.AuthKeys(r.Context())
	if err != nil {
		s.adminError(w, "list auth keys", err)
		return
	}
	writeJSON(w, http.StatusOK, keys)
}

func (a *adminAPI) handleDeleteAuthKey(w http.ResponseWriter, r *http.Request) {
	s := a.core
	if err := s.DeleteAuthKeyAs(r.Context(), actorAdmin, r.PathValue("prefix")); err != nil {
		s.adminError(w, "delete auth key", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleListNodes(w http.ResponseWriter, r *http.Request) {
	s := a.core
	nodes, err := s.Nodes(r.Context())
	if err != nil {
		s.adminError(w, "list nodes", err)
		return
	}
	if nodes == nil {
		nodes = []*wire.Node{}
	}
	writeJSON(w, http.StatusOK, nodes)
}

func (a *adminAPI) handleRemoveNode(w http.ResponseWriter, r *http.Request) {
	s := a.core
	if err := s.RemoveNode(r.Context(), r.PathValue("name")); err != nil {
		s.adminError(w, "remove node", err)
		return
	}
	s.audit(r.Context(), actorAdmin, "node.remove", r.PathValue("name"), "")
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleExpireNode(w http.ResponseWriter, r *http.Request) {
	s := a.core
	if err := s.ExpireNode(r.Context(), r.PathValue("name")); err != nil {
		s.adminError(w, "expire node", err)
		return
	}
	s.audit(r.Context(), actorAdmin, "node.expire", r.PathValue("name"), "")
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleRenameNode(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var req wire.RenameNodeRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestSize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed request body: want {\"name\": \"NEW\"}"))
		return
	}
	n, err := s.reg.renameNode(context.WithoutCancel(r.Context()), actorAdmin, r.PathValue("name"), req.Name)
	if err != nil {
		s.adminError(w, "rename node", err)
		return
	}
	writeJSON(w, http.StatusOK, n)
}

func (a *adminAPI) handleSetNodeExpiry(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var req wire.SetExpiryRequest
	if !decodeJSONBody(w, r, &req) {
		return
	}
	d, err := parseKeyExpiry(req.Expiry)
	if err != nil {
		s.adminError(w, "set node expiry", err)
		return
	}
	var at time.Time
	if d > 0 {
		at = s.now().Add(d)
	}
	n, err := s.SetNodeExpiry(r.Context(), r.PathValue("name"), at)
	if err != nil {
		s.adminError(w, "set node expiry", err)
		return
	}
	detail := "never"
	if !at.IsZero() {
		detail = at.UTC().Format(time.RFC3339)
	}
	s.audit(r.Context(), actorAdmin, "node.set_expiry", n.Name, detail)
	writeJSON(w, http.StatusOK, n)
}

func (a *adminAPI) handleCreateUser(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var req wire.CreateUserRequest
	if !decodeJSONBody(w, r, &req) {
		return
	}
	u, err := s.CreateUser(r.Context(), req.Name)
	if err != nil {
		s.adminError(w, "create user", err)
		return
	}
	s.audit(r.Context(), actorAdmin, "user.create", u.Name, "")
	writeJSON(w, http.StatusCreated, u)
}

func (a *adminAPI) handleListUsers(w http.ResponseWriter, r *http.Request) {
	s := a.core
	us, err := s.Users(r.Context())
	if err != nil {
		s.adminError(w, "list users", err)
		return
	}
	if us == nil {
		us = []*wire.User{}
	}
	writeJSON(w, http.StatusOK, us)
}

func (a *adminAPI) handleDeleteUser(w http.ResponseWriter, r *http.Request) {
	s := a.core
	name := r.PathValue("name")
	if r.URL.Query().Get("nodes") == "delete" {
		if _, err := s.DeleteUserAndNodes(r.Context(), actorAdmin, name); err != nil {
			s.adminError(w, "delete user", err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if err := s.DeleteUser(r.Context(), name); err != nil {
		s.adminError(w, "delete user", err)
		return
	}
	s.audit(r.Context(), actorAdmin, "user.delete", name, "")
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleListPending(w http.ResponseWriter, r *http.Request) {
	s := a.core
	writeJSON(w, http.StatusOK, s.PendingRegistrations())
}

func (a *adminAPI) handleApprove(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var req wire.ApproveRequest
	if !decodeJSONBody(w, r, &req) {
		return
	}
	ap := Approval{User: req.User, Tags: req.Tags, Actor: actorAdmin}
	if err := s.ApproveRegistration(r.Context(), r.PathValue("code"), ap); err != nil {
		s.adminError(w, "approve registration", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleAudit(w http.ResponseWriter, r *http.Request) {
	s := a.core
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "limit must be a positive number"))
			return
		}
		limit = min(n, 10000)
	}
	out, err := s.Audit(r.Context(), limit)
	if err != nil {
		s.adminError(w, "read audit log", err)
		return
	}
	if out == nil {
		out = []wire.AuditEntry{}
	}
	writeJSON(w, http.StatusOK, out)
}

func (a *adminAPI) handleListRoutes(w http.ResponseWriter, r *http.Request) {
	s := a.core
	writeJSON(w, http.StatusOK, s.Routes(r.Context()))
}

func (a *adminAPI) handleRemoveRoutes(w http.ResponseWriter, r *http.Request) {
	s := a.core
	if err := s.RemoveRoutes(r.Context(), r.PathValue("host")); err != nil {
		s.adminError(w, "remove routes", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleVerifyDomain(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var req wire.VerifyDomainRequest
	if r.ContentLength != 0 {
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestSize))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed request body"))
			return
		}
	}
	st, err := s.VerifyDomain(r.Context(), req.Network, r.PathValue("domain"))
	if err == errEdgeDisabled {
		writeError(w, errorf(http.StatusNotImplemented, wire.CodeEdgeDisabled, "this coordinator has no public edge (no edge domain configured)"))
		return
	}
	if err != nil {
		s.adminError(w, "verify domain", err)
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *adminAPI) handleListDomains(w http.ResponseWriter, r *http.Request) {
	s := a.core
	writeJSON(w, http.StatusOK, s.Domains(r.Context()))
}

func (a *adminAPI) handleRemoveDomain(w http.ResponseWriter, r *http.Request) {
	s := a.core
	err := s.RemoveDomain(r.Context(), r.URL.Query().Get("network"), r.PathValue("domain"))
	if err == errEdgeDisabled {
		writeError(w, errorf(http.StatusNotImplemented, wire.CodeEdgeDisabled, "this coordinator has no public edge (no edge domain configured)"))
		return
	}
	if err != nil {
		s.adminError(w, "remove domain", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handlePutTXT(w http.ResponseWriter, r *http.Request) {
	s := a.core
	var body wire.TXTBody
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxRequestSize))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "malformed request body"))
		return
	}
	if len(body.Values) == 0 {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "no values; use DELETE to remove a TXT record"))
		return
	}
	if err := s.SetTXT(r.Context(), r.PathValue("name"), body.Values); err != nil {
		s.adminError(w, "set TXT", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleDeleteTXT(w http.ResponseWriter, r *http.Request) {
	s := a.core
	if err := s.SetTXT(r.Context(), r.PathValue("name"), nil); err != nil {
		s.adminError(w, "delete TXT", err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *adminAPI) handleGetDNSConfig(w http.ResponseWriter, r *http.Request) {
	s := a.core
	writeJSON(w, http.StatusOK, s.DNSSettings())
}

func (a *adminAPI) handlePutDNSConfig(w http.ResponseWriter, r *http.Request) {
	s := a.core
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRequestSize))
	if err != nil {
		writeError(w, errorf(http.StatusBadRequest, wire.CodeBadRequest, "request body too large"))
		return
	}
	d, err := ParseDNSSettings(b)
	if err == nil {
		err = s.SetDNSSettings(r.Context(), d)
	}
	if err != nil {
		s.adminError(w, "set DNS settings", err)
		return
	}
	writeJSON(w, http.StatusOK, s.DNSSettings())
}

// writeJSON writes v as the JSON answer with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// adminError writes err as the answer to an admin request of operation
// op: an *apiError as it is, the store's sentinel errors as 400, 404 and
// 409, anything else as a logged 500.
func (s *Server) adminError(w http.ResponseWriter, op string, err error) {
	var aerr *apiError
	switch {
	case errors.As(err, &aerr):
	case errors.Is(err, ErrInvalid):
		aerr = errorf(http.StatusBadRequest, wire.CodeBadRequest, "%v", strings.TrimPrefix(err.Error(), "coordinator: "))
	case errors.Is(err, ErrNotFound):
		aerr = errorf(http.StatusNotFound, wire.CodeNotFound, "%v", strings.TrimPrefix(err.Error(), "coordinator: "))
	case errors.Is(err, ErrConflict):
		aerr = errorf(http.StatusConflict, wire.CodeConflict, "%v", strings.TrimPrefix(err.Error(), "coordinator: "))
	default:
		s.logger.Error(op, "err", err)
		aerr = errorf(http.StatusInternalServerError, wire.CodeInternal, "%s failed", op)
	}
	writeError(w, aerr)
}
