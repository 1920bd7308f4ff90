package console

import (
	"html/template"
	"net/http"
	"sync"

	"beam.dev/beam/coordinator"
)

// ssoDone sends the browser on to the console with a same-site
// navigation: the callback that signs in is the end of a redirect chain
// that started at the provider's site, and a SameSite=Strict cookie is
// not sent on a redirect from there.
var ssoDone = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("sso").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="0;url={{.}}"><title>Beam console</title></head>
<body><p>Signed in. <a id="continue" href="{{.}}">Continue to the console</a>.</p></body></html>`))
})

// SignInWith starts a console session for name, who signed in some other
// way than the admin token (method says how: "oidc"), and sends the
// browser to next. The caller has checked that name is an admin. As with
// the token, a session over plain HTTP starts only from loopback.
func (c *Console) SignInWith(w http.ResponseWriter, r *http.Request, name, method, next string) {
	if !isTLS(r) && !remoteAddr(r).IsLoopback() {
		c.refuse(w, r, http.StatusForbidden, "Sign-in over plain HTTP works only from the coordinator's own machine. Use HTTPS (a TLS proxy in front of the coordinator), or an SSH tunnel.")
		return
	}
	who := Identity{Name: name, Method: method}
	if old := c.sessions.fromRequest(r); old != nil {
		c.sessions.remove(old)
	}
	_, value := c.sessions.create(who, nil)
	http.SetCookie(w, sessionCookie(r, value, c.sessions.lifetime))
	c.coord.RecordAudit(r.Context(), coordinator.ActorConsole(who.Name), "console.login", who.Name, "via "+who.Method+" from "+remoteAddr(r).String())
	c.logger.Info("signed in", "who", who.Name, "method", who.Method, "remote", r.RemoteAddr)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	ssoDone().Execute(w, safeNext(next))
}
