package expose

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"encoding/xml"
	"html/template"
	"io"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"
)

// The inspector's pages: server-rendered HTML with a little inline script
// (an EventSource that adds new exchanges to the list). No build step.

// maxHexDump caps the bytes of a binary body shown as hex.
const maxHexDump = 64 << 10

// nonce returns a fresh script nonce for the Content-Security-Policy.
func nonce() string { return rand.Text() }

func (i *Inspector) writePage(w http.ResponseWriter, t *template.Template, data map[string]any) {
	n := nonce()
	data["Nonce"] = n
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+n+"'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		i.logger.Debug("inspector: page", "err", err)
		http.Error(w, "beam inspector: "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Write(b.Bytes())
}

func (i *Inspector) servePage(w http.ResponseWriter, r *http.Request) {
	f := filterOf(r)
	all, _ := i.s.rec.since(0)
	var after uint64
	for _, x := range all {
		after = max(after, x.seq)
	}
	rows := []summary{}
	for k := len(all) - 1; k >= 0; k-- {
		if f.match(all[k]) {
			rows = append(rows, summarize(all[k]))
		}
	}
	i.writePage(w, listPage(), map[string]any{
		"Rows": rows, "Path": f.path, "Status": f.status, "Method": f.method, "Query": f.query(), "After": after,
		"URL": i.URL(), "Base": pageBase(r),
	})
}

// bodyView is a body as the detail page shows it.
type bodyView struct {
	Kind string // "json", "xml", "form", "text", "hex" or "" (none)
	Text string
	Note string
}

// prettyBody renders m's body for people: indented JSON and XML, form
// fields one a line, text as it is, anything else as a hex dump.
func prettyBody(m *Message) bodyView {
	if m == nil || len(m.Body) == 0 {
		return bodyView{}
	}
	body := m.Body
	var notes []string
	if m.Truncated {
		notes = append(notes, "cut at the inspector's limit: shown "+itoa(len(m.Body))+" of "+itoa64(m.BodySize)+" bytes")
	}
	if strings.EqualFold(m.Header.Get("Content-Encoding"), "gzip") {
		if zr, err := gzip.NewReader(bytes.NewReader(body)); err == nil {
			if d, err := io.ReadAll(io.LimitReader(zr, DefaultBodyLimit)); len(d) > 0 && (err == nil || m.Truncated) {
				body = d
				notes = append(notes, "decoded from gzip")
			}
		}
	}
	ct, params, _ := mime.ParseMediaType(m.Header.Get("Content-Type"))
	note := strings.Join(notes, "; ")
	switch {
	case ct == "application/json" || strings.HasSuffix(ct, "+json") || ct == "" && json.Valid(body):
		var b bytes.Buffer
		if json.Indent(&b, body, "", "  ") == nil {
			return bodyView{Kind: "json", Text: b.String(), Note: note}
		}
	case ct == "application/xml" || ct == "text/xml" || strings.HasSuffix(ct, "+xml"):
		if t, ok := indentXML(body); ok {
			return bodyView{Kind: "xml", Text: t, Note: note}
		}
	case ct == "application/x-www-form-urlencoded":
		if v, err := url.ParseQuery(string(body)); err == nil {
			var b strings.Builder
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			for _, k := range keys {
				for _, x := range v[k] {
					b.WriteString(k + " = " + x + "\n")
				}
			}
			return bodyView{Kind: "form", Text: b.String(), Note: note}
		}
	}
	if utf8.Valid(body) && (strings.HasPrefix(ct, "text/") || ct == "" || params["charset"] != "" || isPrintable(body)) {
		return bodyView{Kind: "text", Text: string(body), Note: note}
	}
	dump := body
	if len(dump) > maxHexDump {
		dump = dump[:maxHexDump]
		notes = append(notes, "hex dump of the first "+itoa(maxHexDump)+" bytes")
	}
	return bodyView{Kind: "hex", Text: hex.Dump(dump), Note: strings.Join(notes, "; ")}
}

func isPrintable(b []byte) bool {
	for _, r := range string(b) {
		if r < 0x20 && r != '\n' && r != '\r' && r != '\t' {
			return false
		}
	}
	return true
}

// indentXML re-indents an XML document, or reports false.
func indentXML(b []byte) (string, bool) {
	dec := xml.NewDecoder(bytes.NewReader(b))
	var out bytes.Buffer
	enc := xml.NewEncoder(&out)
	enc.Indent("", "  ")
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			return "", false
		}
		if cd, ok := tok.(xml.CharData); ok && len(bytes.TrimSpace(cd)) == 0 {
			continue
		}
		if err := enc.EncodeToken(xml.CopyToken(tok)); err != nil {
			return "", false
		}
	}
	if enc.Flush() != nil {
		return "", false
	}
	return out.String(), true
}

// headerLines returns h as sorted "Name: value" lines.
func headerLines(h http.Header) []string {
	var out []string
	for k, vs := range h {
		for _, v := range vs {
			out = append(out, k+": "+v)
		}
	}
	slices.Sort(out)
	return out
}

func (i *Inspector) serveDetail(w http.ResponseWriter, r *http.Request) {
	x := i.s.rec.get(r.PathValue("id"))
	if x == nil {
		http.Error(w, "no such request (the inspector keeps the latest "+itoa(maxExchanges)+")", http.StatusNotFound)
		return
	}
	data := map[string]any{
		"X": x, "S": summarize(x), "Token": i.session, "Base": pageBase(r),
		"Replayable": x.Kind == "http" && x.dial != nil,
		"FirstByte":  roundDuration(x.FirstByte),
		"StatusText": http.StatusText(x.Status),
	}
	if x.Request != nil {
		data["ReqHeaders"] = headerLines(x.Request.Header)
		data["ReqBody"] = prettyBody(x.Request)
		var hs []string
		for _, l := range headerLines(x.Request.Header) {
			if k, _, _ := strings.Cut(l, ":"); !slices.ContainsFunc(hopHeaders[1:], func(h string) bool { return strings.EqualFold(h, k) }) {
				hs = append(hs, l)
			}
		}
		data["EditHeaders"] = strings.Join(hs, "\n")
		data["BodyEditable"] = utf8.Valid(x.Request.Body) && !x.Request.Truncated
		data["EditBody"] = string(x.Request.Body)
	} else {
		data["BodyEditable"] = true
	}
	if x.Response != nil {
		data["RespHeaders"] = headerLines(x.Response.Header)
		data["RespBody"] = prettyBody(x.Response)
	}
	i.writePage(w, detailPage(), data)
}

func itoa(n int) string     { return strconv.Itoa(n) }
func itoa64(n int64) string { return strconv.FormatInt(n, 10) }

const pageStyle = `<style>
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2430;background:#fafbfc}
header{background:#1d2430;color:#fff;padding:10px 16px;display:flex;gap:16px;align-items:baseline}
header h1{font-size:17px;margin:0} header a{color:#9cc4ff}
main{padding:12px 16px}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #e3e6ea;white-space:nowrap}
td.path{white-space:normal;word-break:break-all}
tr.s4 td.st{color:#b35900} tr.s5 td.st{color:#c0392b} tr.s2 td.st{color:#1e7b34}
.badge{font-size:11px;padding:1px 6px;border-radius:8px;background:#e7ecf3;margin-left:4px}
.badge.replay{background:#fff1c2} .badge.edge{background:#ffe0e0} .badge.beam{background:#e0e0ff}
form.filter{display:flex;gap:8px;margin-bottom:10px} input,textarea{font:13px ui-monospace,monospace}
pre{background:#fff;border:1px solid #e3e6ea;padding:8px;overflow:auto;max-height:480px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px} dt{color:#5b6675}
.muted{color:#8a94a3} textarea{width:100%;min-height:90px} .row{display:flex;gap:8px;margin:6px 0}
</style>`

// listPage is the inspector's list of exchanges. It is parsed on first
// use, as detailPage is: a daemon that never serves the inspector does
// not parse them at start.
var listPage = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("list").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Beam inspector</title>` + pageStyle + `</head>
<body><header><h1>Beam inspector</h1><span class="muted">{{.URL}}</span></header>
<main>
<form class="filter" method="get" action="{{.Base}}/">
<input name="path" placeholder="path contains" value="{{.Path}}">
<input name="status" placeholder="status: 404, 4xx" value="{{.Status}}" size="10">
<input name="method" placeholder="method" value="{{.Method}}" size="8">
<button>Filter</button> <a href="{{.Base}}/">all</a>
</form>
<table id="requests"><thead><tr><th>Time</th><th>Method</th><th>Host</th><th>Path</th><th>Status</th><th>Duration</th><th>Size</th><th>Client</th><th>Answered by</th></tr></thead>
<tbody id="rows">{{range .Rows}}
<tr data-id="{{.ID}}" data-path="{{.Path}}" class="s{{printf "%.1d" .Status}}{{if .Replay}} replay{{end}}"><td>{{.Time}}</td><td>{{.Method}}{{if ne .Kind "http"}}{{.Kind}}{{end}}</td><td>{{.Host}}</td><td class="path"><a href="{{$.Base}}/requests/{{.ID}}">{{if ne .Kind "http"}}connection{{else}}{{.Path}}{{end}}</a>{{if .Replay}}<span class="badge replay">replay{{if .Edited}}, edited{{end}}</span>{{end}}</td><td class="st">{{if .Status}}{{.Status}}{{end}}</td><td>{{.Took}}</td><td>{{.Size}}</td><td>{{.Client}}</td><td><span class="badge {{.AnsweredBy}}">{{.AnsweredBy}}</span></td></tr>{{end}}
</tbody></table>
<p class="muted" id="empty"{{if .Rows}} hidden{{end}}>No requests yet. Requests to this device's published routes appear here as they arrive.</p>
</main>
<script nonce="{{.Nonce}}">
(function () {
  const query = {{.Query}};
  const base = {{.Base}};
  const rows = document.getElementById('rows');
  const es = new EventSource(base + '/api/events?after={{.After}}' + (query ? '&' + query : ''));
  function td(tr, text, cls) { const c = document.createElement('td'); c.textContent = text; if (cls) c.className = cls; tr.appendChild(c); return c; }
  es.onmessage = function (ev) {
    const s = JSON.parse(ev.data);
    const tr = document.createElement('tr');
    tr.dataset.id = s.id; tr.dataset.path = s.path || '';
    tr.className = 's' + String(s.status || 0).charAt(0) + (s.replay ? ' replay' : '');
    td(tr, s.time); td(tr, s.kind === 'http' ? s.method : s.kind); td(tr, s.host || '');
    const p = td(tr, '', 'path'); const a = document.createElement('a');
    a.href = base + '/requests/' + encodeURIComponent(s.id); a.textContent = s.kind === 'http' ? s.path : 'connection'; p.appendChild(a);
    if (s.replay) { const b = document.createElement('span'); b.className = 'badge replay'; b.textContent = s.edited ? 'replay, edited' : 'replay'; p.appendChild(b); }
    td(tr, s.status ? String(s.status) : '', 'st'); td(tr, s.took); td(tr, String(s.size)); td(tr, s.client || '');
    const by = td(tr, ''); const bb = document.createElement('span'); bb.className = 'badge ' + s.answered_by; bb.textContent = s.answered_by; by.appendChild(bb);
    const old = rows.querySelector('tr[data-id="' + CSS.escape(s.id) + '"]');
    if (old) old.replaceWith(tr); else rows.insertBefore(tr, rows.firstChild);
    document.getElementById('empty').hidden = true;
  };
})();
</script>
</body></html>`))
})

var detailPage = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("detail").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.X.Method}} {{.X.Path}} - Beam inspector</title>` + pageStyle + `</head>
<body><header><h1>Beam inspector</h1><a href="{{.Base}}/">all requests</a></header>
<main>
<h2 id="title">{{if ne .X.Kind "http"}}{{.X.Kind}} connection{{else}}{{.X.Method}} {{.X.Path}}{{end}}{{if .X.Replay}} <span class="badge replay" id="replay-mark">replay of <a href="{{.Base}}/requests/{{.X.ReplayOf}}">{{.X.ReplayOf}}</a>{{if .X.Edited}}, edited{{end}}</span>{{end}}</h2>
<dl>
<dt>Status</dt><dd id="status">{{if .X.Status}}{{.X.Status}}{{else}}-{{end}}</dd>
<dt>Host</dt><dd>{{.X.Host}}</dd>
<dt>Client</dt><dd>{{.X.Client}}</dd>
<dt>Answered by</dt><dd><span class="badge {{.X.AnsweredBy}}">{{.X.AnsweredBy}}</span></dd>
<dt>Started</dt><dd>{{.S.Time}}</dd>
<dt>Duration</dt><dd>{{.S.Took}}</dd>
{{if .X.FirstByte}}<dt>First byte</dt><dd>{{.FirstByte}}</dd>{{end}}
<dt>{{if ne .X.Kind "http"}}Bytes from the app{{else}}Response size{{end}}</dt><dd>{{.X.Size}}</dd>
{{if ne .X.Kind "http"}}<dt>Bytes from the client</dt><dd>{{.X.BytesIn}}</dd>{{end}}
<dt>Port</dt><dd>{{.X.Port}}</dd>
{{if .X.Error}}<dt>Error</dt><dd>{{.X.Error}}</dd>{{end}}
</dl>
{{if .Replayable}}
<form method="post" action="{{.Base}}/requests/{{.X.ID}}/replay" id="replay-form"><input type="hidden" name="token" value="{{.Token}}"><button id="replay">Replay</button></form>
<details id="edit"><summary>Edit and replay</summary>
<form method="post" action="{{.Base}}/requests/{{.X.ID}}/replay" id="edit-form">
<input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="edit" value="1">
<div class="row"><label>Method <input name="method" id="edit-method" value="{{.X.Method}}" size="8"></label>
<label>Path <input name="path" id="edit-path" value="{{.X.Path}}" size="60"></label></div>
<label>Headers, one "Name: value" a line<textarea name="headers" id="edit-headers">
{{.EditHeaders}}</textarea></label>
{{if .BodyEditable}}<label>Body<textarea name="body" id="edit-body">
{{.EditBody}}</textarea></label>{{else}}<p class="muted">The body is binary or was cut; it is sent as captured.</p>{{end}}
<button id="edit-send">Send</button>
</form></details>
{{end}}
{{if .X.Request}}<h3>Request</h3>
<pre id="request-headers">{{range .ReqHeaders}}{{.}}
{{end}}</pre>
{{with .ReqBody}}{{if .Kind}}<p class="muted">Body ({{.Kind}}){{if .Note}}: {{.Note}}{{end}}</p><pre id="request-body">{{.Text}}</pre>{{end}}{{end}}
{{end}}
{{if .X.Response}}<h3>Response</h3>
<pre id="response-headers">{{.X.Response.Proto}} {{.X.Status}} {{.StatusText}}
{{range .RespHeaders}}{{.}}
{{end}}</pre>
{{with .RespBody}}{{if .Kind}}<p class="muted">Body ({{.Kind}}){{if .Note}}: {{.Note}}{{end}}</p><pre id="response-body">{{.Text}}</pre>{{end}}{{end}}
{{end}}
</main></body></html>`))
})
