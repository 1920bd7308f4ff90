package console

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"beam.dev/beam/coordinator"
	"beam.dev/beam/coordinator/policy"
	"beam.dev/beam/types/key"
	"beam.dev/beam/wire"
)

// userText is an error's message for the page: without the package
// prefix, and for unexpected (internal) errors a plain sentence while
// the detail goes to the log.
func (c *Console) userText(op string, err error) string {
	switch {
	case errors.Is(err, coordinator.ErrInvalid), errors.Is(err, coordinator.ErrNotFound), errors.Is(err, coordinator.ErrConflict):
		msg := err.Error()
		for _, p := range []string{"coordinator: ", "invalid argument: ", "not found: ", "conflict: "} {
			msg = strings.TrimPrefix(msg, p)
		}
		return msg
	}
	c.logger.Error(op, "err", err)
	return op + " failed; the coordinator's log says why"
}

// --- sign-in ---

type loginData struct {
	Next string
	// SSO is the identity provider sign-in link; empty if none.
	SSO string
}

func (c *Console) handleLoginForm(w http.ResponseWriter, r *http.Request) {
	next := safeNext(r.URL.Query().Get("next"))
	ss := c.sessions.fromRequest(r)
	if ss != nil && ss.who.signedIn() {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	c.loginForm(w, r, http.StatusOK, next, "")
}

// loginForm renders the sign-in form with a CSRF token for the browser's
// pre-login cookie, setting one if it has none. Nothing is kept on the
// server (loginform.go).
func (c *Console) loginForm(w http.ResponseWriter, r *http.Request, status int, next, errMsg string) {
	c.render(w, r, status, "login", nil, pageData{Title: "Sign in", Error: errMsg, CSRF: c.loginToken(w, r), Data: c.loginData(next)})
}

// loginToken returns a sign-in form token for r's pre-login cookie,
// setting a new cookie first if r has none.
func (c *Console) loginToken(w http.ResponseWriter, r *http.Request) string {
	v := loginCookie(r)
	if v == "" {
		v = randomToken()
	}
	// Set again each time, so that the cookie outlives the form's token.
	setLoginCookie(w, r, v, c.forms.lifetime)
	return c.forms.token(v)
}

func (c *Console) loginData(next string) loginData {
	d := loginData{Next: next}
	if c.ssoURL != "" {
		d.SSO = c.ssoURL + "?next=" + url.QueryEscape(next)
	}
	return d
}

func (c *Console) handleLogin(w http.ResponseWriter, r *http.Request) {
	if ok, wait := c.limiter.allow(remoteAddr(r)); !ok {
		secs := int(wait/time.Second) + 1
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		c.logger.Warn("sign-in attempts limited", "remote", r.RemoteAddr)
		c.render(w, r, http.StatusTooManyRequests, "login", nil, pageData{
			Title: "Sign in", Error: "Too many sign-in attempts from your address; try again in " + strconv.Itoa(secs) + " seconds.",
			CSRF: c.loginToken(w, r), Data: loginData{Next: safeNext(r.URL.Query().Get("next"))},
		})
		return
	}
	if err := c.xorigin.Check(r); err != nil {
		c.refuse(w, r, http.StatusForbidden, "Cross-origin request refused.")
		return
	}
	if !isTLS(r) && !remoteAddr(r).IsLoopback() {
		// The token would cross the network in clear text.
		c.refuse(w, r, http.StatusForbidden, "Sign-in over plain HTTP works only from the coordinator's own machine. Use HTTPS (a TLS proxy in front of the coordinator), or an SSH tunnel: ssh -L 8080:127.0.0.1:PORT HOST, then open http://127.0.0.1:8080"+Path)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxFormBytes)
	if err := r.ParseForm(); err != nil {
		c.refuse(w, r, http.StatusBadRequest, "Malformed form.")
		return
	}
	next := safeNext(r.PostForm.Get("next"))
	if !c.forms.valid(loginCookie(r), r.PostForm.Get("csrf")) {
		// An expired form, or a post from somewhere else: a fresh form.
		c.loginForm(w, r, http.StatusForbidden, next, "The sign-in form expired or was not this console's; enter the token again.")
		return
	}
	// The token in force before it is checked: a rotation meanwhile ends
	// the session at once rather than binding it to the new token.
	fp := c.coord.AdminTokenFingerprint()
	if !c.coord.AdminTokenValid(r.PostForm.Get("token")) {
		c.coord.RecordAudit(r.Context(), coordinator.ActorConsole("?"), "console.login_failed", "admin", "wrong admin token from "+remoteAddr(r).String())
		c.logger.Warn("sign-in with a wrong admin token", "remote", r.RemoteAddr)
		c.render(w, r, http.StatusUnauthorized, "login", nil, pageData{Title: "Sign in", Error: "Wrong admin token.", CSRF: c.loginToken(w, r), Data: c.loginData(next)})
		return
	}
	c.signIn(w, r, c.sessions.fromRequest(r), Identity{Name: "admin", Method: "admin token"}, &fp, next)
}

func (c *Console) handleLogout(w http.ResponseWriter, r *http.Request, ss *session) {
	c.sessions.remove(ss)
	http.SetCookie(w, sessionCookie(r, "", 0))
	c.coord.RecordAudit(r.Context(), actor(ss), "console.logout", ss.who.Name, "")
	http.Redirect(w, r, Path+"login", http.StatusSeeOther)
}

// --- nodes ---

type nodeRow struct {
	*wire.Node
	Network string
	Version int
	Expired bool
}

type nodesData struct {
	Nodes   []nodeRow
	Pending []wire.PendingRegistration
}

// networkOf returns the network label of a node's DNS name
// ("beta.default.beam.internal." -> "default").
func networkOf(n *wire.Node) string {
	_, rest, _ := strings.Cut(n.DNSName, ".")
	label, _, _ := strings.Cut(rest, ".")
	return label
}

func (c *Console) handleNodes(w http.ResponseWriter, r *http.Request, ss *session) {
	nodes, err := c.coord.Nodes(r.Context())
	if err != nil {
		c.render(w, r, http.StatusInternalServerError, "refused", ss, pageData{Title: "Nodes", Nav: "nodes", Error: c.userText("list nodes", err)})
		return
	}
	versions := c.coord.NodeVersions()
	now := c.now()
	d := nodesData{Pending: c.coord.PendingRegistrations()}
	for _, n := range nodes {
		d.Nodes = append(d.Nodes, nodeRow{Node: n, Network: networkOf(n), Version: versions[n.Key], Expired: n.Expired(now)})
	}
	c.render(w, r, http.StatusOK, "nodes", ss, pageData{Title: "Nodes", Nav: "nodes", Data: d})
}

// --- approvals ---

type pendingData struct {
	Pending []wire.PendingRegistration
	Users   []*wire.User
}

func (c *Console) handlePending(w http.ResponseWriter, r *http.Request, ss *session) {
	users, _ := c.coord.Users(r.Context())
	c.render(w, r, http.StatusOK, "pending", ss, pageData{Title: "Pending approvals", Nav: "pending", Data: pendingData{Pending: c.coord.PendingRegistrations(), Users: users}})
}

type approveData struct {
	Code string
	Reg  *wire.PendingRegistration
	// Users are the users the node may be given.
	Users []*wire.User
}

func (c *Console) handleApproveForm(w http.ResponseWriter, r *http.Request, ss *session) {
	code := strings.ToUpper(r.PathValue("code"))
	d := approveData{Code: code}
	for _, p := range c.coord.PendingRegistrations() {
		if p.Code == code {
			d.Reg = &p
		}
	}
	status := http.StatusOK
	if d.Reg == nil {
		status = http.StatusNotFound
	}
	d.Users, _ = c.coord.Users(r.Context())
	c.render(w, r, status, "approve", ss, pageData{Title: "Approve a node", Nav: "pending", Data: d})
}

// splitList splits a comma- or space-separated field.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r' })
}

func (c *Console) handleApprove(w http.ResponseWriter, r *http.Request, ss *session) {
	code := strings.ToUpper(r.PathValue("code"))
	var hostname string
	for _, p := range c.coord.PendingRegistrations() {
		if p.Code == code {
			hostname = p.Hostname
		}
	}
	a := coordinator.Approval{User: r.PostForm.Get("user"), Tags: splitList(r.PostForm.Get("tags")), Actor: actor(ss)}
	if err := c.coord.ApproveRegistration(background(r), code, a); err != nil {
		back := Path + "approve/" + code
		if errors.Is(err, coordinator.ErrNotFound) || errors.Is(err, coordinator.ErrConflict) {
			back = Path + "pending"
		}
		c.redirectFlash(w, r, ss, back, c.userText("approve", err), true)
		return
	}
	c.redirectFlash(w, r, ss, Path+"nodes", "Approved "+hostname+" ("+code+"): it joins within seconds, as soon as its beam up asks again.", false)
}

// --- routes ---

type routeRow struct {
	wire.RouteInfo
	// Owner is the serving node's user or tags.
	Owner string
}

func (c *Console) handleRoutes(w http.ResponseWriter, r *http.Request, ss *session) {
	nodes, _ := c.coord.Nodes(r.Context())
	byKey := make(map[key.NodePublic]*wire.Node, len(nodes))
	for _, n := range nodes {
		byKey[n.Key] = n
	}
	var rows []routeRow
	for _, ri := range c.coord.Routes(r.Context()) {
		row := routeRow{RouteInfo: ri}
		if n := byKey[ri.Node]; n != nil {
			row.Owner = n.User
			if len(n.Tags) > 0 {
				row.Owner = strings.Join(n.Tags, ", ")
			}
		}
		rows = append(rows, row)
	}
	c.render(w, r, http.StatusOK, "routes", ss, pageData{Title: "Routes", Nav: "routes", Data: rows})
}

// --- users ---

type userRow struct {
	*wire.User
	Nodes int
}

func (c *Console) handleUsers(w http.ResponseWriter, r *http.Request, ss *session) {
	users, err := c.coord.Users(r.Context())
	if err != nil {
		c.render(w, r, http.StatusInternalServerError, "refused", ss, pageData{Title: "Users", Nav: "users", Error: c.userText("list users", err)})
		return
	}
	nodes, _ := c.coord.Nodes(r.Context())
	count := make(map[string]int)
	for _, n := range nodes {
		count[n.User]++
	}
	rows := make([]userRow, 0, len(users))
	for _, u := range users {
		rows = append(rows, userRow{User: u, Nodes: count[u.Name]})
	}
	c.render(w, r, http.StatusOK, "users", ss, pageData{Title: "Users", Nav: "users", Data: rows})
}

func (c *Console) handleCreateUser(w http.ResponseWriter, r *http.Request, ss *session) {
	name := strings.TrimSpace(r.PostForm.Get("name"))
	u, err := c.coord.CreateUser(background(r), name)
	if err != nil {
		c.redirectFlash(w, r, ss, Path+"users", c.userText("create user", err), true)
		return
	}
	c.coord.RecordAudit(r.Context(), actor(ss), "user.create", u.Name, "")
	c.redirectFlash(w, r, ss, Path+"users", "Created user "+u.Name+".", false)
}

func (c *Console) handleDeleteUser(w http.ResponseWriter, r *http.Request, ss *session) {
	name := r.PathValue("name")
	if err := c.coord.DeleteUser(background(r), name); err != nil {
		c.redirectFlash(w, r, ss, Path+"users", c.userText("delete user", err), true)
		return
	}
	c.coord.RecordAudit(r.Context(), actor(ss), "user.delete", name, "")
	c.redirectFlash(w, r, ss, Path+"users", "Deleted user "+name+".", false)
}

// --- auth keys ---

type keysData struct {
	Keys  []wire.AuthKeyInfo
	Users []*wire.User
	// NewKey is the secret of the key just created, shown once.
	NewKey string
}

func (c *Console) keysPage(w http.ResponseWriter, r *http.Request, ss *session, status int, newKey, errMsg string) {
	keys, err := c.coord.AuthKeys(r.Context())
	if err != nil && errMsg == "" {
		errMsg = c.userText("list auth keys", err)
	}
	slices.SortFunc(keys, func(a, b wire.AuthKeyInfo) int { return b.CreatedAt.Compare(a.CreatedAt) })
	users, _ := c.coord.Users(r.Context())
	c.render(w, r, status, "keys", ss, pageData{Title: "Auth keys", Nav: "keys", Error: errMsg, Data: keysData{Keys: keys, Users: users, NewKey: newKey}})
}

func (c *Console) handleKeys(w http.ResponseWriter, r *http.Request, ss *session) {
	c.keysPage(w, r, ss, http.StatusOK, "", "")
}

func (c *Console) handleCreateKey(w http.ResponseWriter, r *http.Request, ss *session) {
	f := r.PostForm
	req := wire.CreateAuthKeyRequest{
		Network:   strings.TrimSpace(f.Get("network")),
		Reusable:  f.Get("reusable") != "",
		Ephemeral: f.Get("ephemeral") != "",
		Expiry:    strings.TrimSpace(f.Get("expiry")),
		Tags:      splitList(f.Get("tags")),
		User:      f.Get("user"),
		KeyExpiry: strings.TrimSpace(f.Get("key_expiry")),
	}
	resp, err := c.coord.CreateAuthKeyAs(background(r), actor(ss), req)
	if err != nil {
		c.keysPage(w, r, ss, http.StatusBadRequest, "", c.userText("create auth key", err))
		return
	}
	// The secret goes in this response only: never in a URL, never in
	// the session.
	c.keysPage(w, r, ss, http.StatusOK, resp.Key, "")
}

func (c *Console) handleRevokeKey(w http.ResponseWriter, r *http.Request, ss *session) {
	prefix := r.PathValue("prefix")
	if err := c.coord.DeleteAuthKeyAs(background(r), actor(ss), prefix); err != nil {
		c.redirectFlash(w, r, ss, Path+"keys", c.userText("revoke auth key", err), true)
		return
	}
	c.redirectFlash(w, r, ss, Path+"keys", "Revoked auth key "+prefix+".", false)
}

// --- policy ---

// problem is one problem found in a policy.
type problem struct {
	Line, Column int
	Msg          string
	TestFailed   bool
}

type policyData struct {
	// Source is the text shown in the editor.
	Source string
	// Checked says Problems are about Source (else about the policy in force).
	Checked bool
	// Problems are what CheckPolicy found; Other an error that is not
	// about the text.
	Problems []problem
	Other    string
}

// policyProblems flattens the *policy.Error values in err.
func policyProblems(err error) []problem {
	var out []problem
	var walk func(error)
	walk = func(err error) {
		if pe, ok := errors.AsType[*policy.Error](err); ok {
			out = append(out, problem{Line: pe.Line, Column: pe.Column, Msg: pe.Msg, TestFailed: errors.Is(pe, policy.ErrTestFailed)})
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
		}
	}
	walk(err)
	return out
}

// checkPolicy runs CheckPolicy on src and fills d's findings.
func (c *Console) checkPolicy(r *http.Request, src string, d *policyData) {
	if _, err := c.coord.CheckPolicy(r.Context(), []byte(src)); err != nil {
		d.Problems = policyProblems(err)
		if len(d.Problems) == 0 {
			d.Other = c.userText("check policy", err)
		}
	}
}

func (c *Console) handlePolicy(w http.ResponseWriter, r *http.Request, ss *session) {
	d := policyData{Source: string(c.coord.Policy())}
	c.checkPolicy(r, d.Source, &d)
	c.render(w, r, http.StatusOK, "policy", ss, pageData{Title: "Policy", Nav: "policy", Data: d})
}

func (c *Console) handleSetPolicy(w http.ResponseWriter, r *http.Request, ss *session) {
	src := strings.ReplaceAll(r.PostForm.Get("policy"), "\r\n", "\n")
	d := policyData{Source: src, Checked: true}
	if r.PostForm.Get("action") != "save" {
		c.checkPolicy(r, src, &d)
		c.render(w, r, http.StatusOK, "policy", ss, pageData{Title: "Policy", Nav: "policy", Data: d})
		return
	}
	if err := c.coord.SetPolicy(background(r), []byte(src)); err != nil {
		d.Problems = policyProblems(err)
		if len(d.Problems) == 0 {
			d.Other = c.userText("set policy", err)
		}
		c.render(w, r, http.StatusBadRequest, "policy", ss, pageData{Title: "Policy", Nav: "policy", Error: "The policy was not saved.", Data: d})
		return
	}
	sum := sha256.Sum256([]byte(src))
	c.coord.RecordAudit(r.Context(), actor(ss), "policy.set", "policy", "sha256:"+hex.EncodeToString(sum[:8]))
	c.redirectFlash(w, r, ss, Path+"policy", "Saved the policy; every node gets it within moments.", false)
}

// --- audit log ---

// auditLimit is how many entries the audit page shows.
const auditLimit = 200

func (c *Console) handleAudit(w http.ResponseWriter, r *http.Request, ss *session) {
	entries, err := c.coord.Audit(r.Context(), auditLimit)
	errMsg := ""
	if err != nil {
		errMsg = c.userText("read audit log", err)
	}
	c.render(w, r, http.StatusOK, "audit", ss, pageData{Title: "Audit log", Nav: "audit", Error: errMsg, Data: entries})
}
