package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/tailscale/hujson"
)

// maxErrors bounds how many problems Parse reports at once.
const maxErrors = 20

// Parse parses and checks a HuJSON policy. Unknown fields, undefined
// groups, tags or hosts, bad ports or protocols and addresses outside the
// overlay are errors. Each problem is an *Error carrying the line and
// column of the offending value; several are joined with errors.Join.
func Parse(b []byte) (*Policy, error) {
	d := &decoder{src: b}
	p := &Policy{
		src:       append([]byte(nil), b...),
		groups:    map[string]map[string]bool{},
		tagOwners: map[string][]string{},
		hosts:     map[string]netip.Prefix{},
	}
	root, err := hujson.Parse(b)
	if err != nil {
		return nil, syntaxError(err)
	}
	obj := d.object(&root, "policy")
	if obj == nil {
		return nil, d.err()
	}
	// Definitions first, whatever their order in the file, then the
	// sections that refer to them.
	fields := map[string]*hujson.Value{}
	for i := range obj.Members {
		m := &obj.Members[i]
		name := d.str(&m.Name)
		switch name {
		case "groups", "tagOwners", "hosts", "acls", "tests", "expose", "peerRelays":
		default:
			d.errorf(&m.Name, "unknown field %q (want groups, tagOwners, hosts, acls, tests, expose or peerRelays)", name)
			continue
		}
		if fields[name] != nil {
			d.errorf(&m.Name, "duplicate field %q", name)
			continue
		}
		fields[name] = &m.Value
	}
	if v := fields["groups"]; v != nil {
		d.groups(p, v)
	}
	if v := fields["tagOwners"]; v != nil {
		d.tagOwners(p, v)
	}
	if v := fields["hosts"]; v != nil {
		d.hosts(p, v)
	}
	if v := fields["acls"]; v != nil {
		d.acls(p, v)
	}
	if v := fields["tests"]; v != nil {
		d.tests(p, v)
	}
	if v := fields["expose"]; v != nil {
		d.expose(p, v)
	}
	if v := fields["peerRelays"]; v != nil {
		d.peerRelays(p, v)
	}
	if err := d.err(); err != nil {
		return nil, err
	}
	return p, nil
}

// syntaxError turns a hujson error into an *Error with its position.
func syntaxError(err error) error {
	e := &Error{Msg: err.Error(), Err: err}
	var line, col int
	if n, _ := fmt.Sscanf(err.Error(), "hujson: line %d, column %d:", &line, &col); n == 2 {
		e.Line, e.Column = line, col
		if _, rest, ok := strings.Cut(err.Error(), fmt.Sprintf("column %d: ", col)); ok {
			e.Msg = "syntax error: " + rest
		}
	}
	return e
}

// decoder walks a hujson tree, collecting errors with positions.
type decoder struct {
	src  []byte
	errs []error
}

func (d *decoder) err() error {
	switch len(d.errs) {
	case 0:
		return nil
	case 1:
		return d.errs[0]
	}
	return errors.Join(d.errs...)
}

func (d *decoder) pos(v *hujson.Value) pos { return posAt(d.src, v.StartOffset) }

func (d *decoder) errorf(v *hujson.Value, format string, args ...any) {
	if len(d.errs) >= maxErrors {
		return
	}
	p := d.pos(v)
	d.errs = append(d.errs, &Error{Line: p.line, Column: p.col, Msg: fmt.Sprintf(format, args...)})
}

func kindName(v *hujson.Value) string {
	switch v.Value.Kind() {
	case 'n':
		return "null"
	case 't', 'f':
		return "a boolean"
	case '"':
		return "a string"
	case '0':
		return "a number"
	case '{':
		return "an object"
	case '[':
		return "an array"
	}
	return "an unknown value"
}

// object returns v as an object, or records an error and returns nil.
func (d *decoder) object(v *hujson.Value, what string) *hujson.Object {
	if o, ok := v.Value.(*hujson.Object); ok {
		return o
	}
	d.errorf(v, "%s must be an object, not %s", what, kindName(v))
	return nil
}

// array returns v as an array, or records an error and returns nil.
func (d *decoder) array(v *hujson.Value, what string) *hujson.Array {
	if a, ok := v.Value.(*hujson.Array); ok {
		return a
	}
	d.errorf(v, "%s must be an array, not %s", what, kindName(v))
	return nil
}

// str returns v's string value. Object names are always strings.
func (d *decoder) str(v *hujson.Value) string {
	if l, ok := v.Value.(hujson.Literal); ok && l.Kind() == '"' {
		return l.String()
	}
	return ""
}

// stringValue returns v as a string, or records an error.
func (d *decoder) stringValue(v *hujson.Value, what string) (string, bool) {
	if l, ok := v.Value.(hujson.Literal); ok && l.Kind() == '"' {
		return l.String(), true
	}
	d.errorf(v, "%s must be a string, not %s", what, kindName(v))
	return "", false
}

// strings returns the string elements of the array v with their values,
// recording an error for each element that is not a string.
func (d *decoder) strings(v *hujson.Value, what string) []strAt {
	a := d.array(v, what)
	if a == nil {
		return nil
	}
	out := make([]strAt, 0, len(a.Elements))
	for i := range a.Elements {
		e := &a.Elements[i]
		if s, ok := d.stringValue(e, what+" element"); ok {
			out = append(out, strAt{s: s, v: e})
		}
	}
	return out
}

// nonEmptyStrings is strings for a list that must not be empty. ok is
// false if anything was wrong.
func (d *decoder) nonEmptyStrings(v *hujson.Value, what string) (_ []strAt, ok bool) {
	n := len(d.errs)
	list := d.strings(v, what)
	if len(d.errs) == n && len(list) == 0 {
		d.errorf(v, "%s is empty", what)
	}
	return list, len(d.errs) == n
}

// proto decodes a "proto" value: a string or a number.
func (d *decoder) proto(v *hujson.Value) ([]int, bool) {
	l, _ := v.Value.(hujson.Literal)
	var s string
	switch {
	case l != nil && l.Kind() == '"':
		s = l.String()
	case l != nil && l.Kind() == '0':
		s = string(l)
	default:
		d.errorf(v, "proto must be a string or a number, not %s", kindName(v))
		return nil, false
	}
	protos, err := parseProto(s)
	if err != nil {
		d.errorf(v, "%v", err)
		return nil, false
	}
	return protos, true
}

// noteUser records a reference to a user name for CheckUsers.
func (d *decoder) noteUser(p *Policy, user string, v *hujson.Value) {
	p.userRefs = append(p.userRefs, userRef{user: user, pos: d.pos(v)})
}

// peerRelays decodes "peerRelays": the selectors of the nodes that may
// offer a peer relay server to their peers.
func (d *decoder) peerRelays(p *Policy, v *hujson.Value) {
	list, _ := d.nonEmptyStrings(v, "peerRelays")
	for _, s := range list {
		sel, err := p.parseSelector(s.s, ctxSrc)
		if err != nil {
			d.errorf(s.v, "%v", err)
			continue
		}
		d.noteSelector(p, sel, s.v)
		p.peerRelays = append(p.peerRelays, sel)
	}
}

// noteSelector records sel if it names a user.
func (d *decoder) noteSelector(p *Policy, sel selector, v *hujson.Value) {
	if sel.kind == selUser {
		d.noteUser(p, sel.name, v)
	}
}

// strAt is a string with the value it came from, for positions.
type strAt struct {
	s string
	v *hujson.Value
}

// members iterates an object's members, rejecting duplicate names.
func (d *decoder) members(o *hujson.Object, what string, f func(name string, nv, v *hujson.Value)) {
	seen := map[string]bool{}
	for i := range o.Members {
		m := &o.Members[i]
		name := d.str(&m.Name)
		if seen[name] {
			d.errorf(&m.Name, "duplicate %s %q", what, name)
			continue
		}
		seen[name] = true
		f(name, &m.Name, &m.Value)
	}
}

func (d *decoder) groups(p *Policy, v *hujson.Value) {
	o := d.object(v, "groups")
	if o == nil {
		return
	}
	d.members(o, "group", func(name string, nv, v *hujson.Value) {
		if err := checkIdent("group:", name); err != nil {
			d.errorf(nv, "%v", err)
			return
		}
		users := map[string]bool{}
		for _, u := range d.strings(v, name) {
			switch {
			case strings.HasPrefix(u.s, "group:"):
				d.errorf(u.v, "group %s cannot contain group %q: groups do not nest", name, u.s)
			case strings.HasPrefix(u.s, "tag:"), strings.HasPrefix(u.s, "autogroup:"), u.s == "*":
				d.errorf(u.v, "group %s may only list users, not %q", name, u.s)
			case u.s == "":
				d.errorf(u.v, "empty user name in %s", name)
			default:
				if err := checkUserName(u.s); err != nil {
					d.errorf(u.v, "%v", err)
					continue
				}
				users[u.s] = true
				d.noteUser(p, u.s, u.v)
			}
		}
		p.groups[name] = users
	})
}

func (d *decoder) tagOwners(p *Policy, v *hujson.Value) {
	o := d.object(v, "tagOwners")
	if o == nil {
		return
	}
	d.members(o, "tag", func(name string, nv, v *hujson.Value) {
		if err := checkIdent("tag:", name); err != nil {
			d.errorf(nv, "%v", err)
			return
		}
		owners := []string{}
		for _, u := range d.strings(v, name+" owners") {
			switch {
			case u.s == "autogroup:admin":
			case strings.HasPrefix(u.s, "group:"):
				if _, ok := p.groups[u.s]; !ok {
					d.errorf(u.v, "unknown group %q", u.s)
					continue
				}
			case strings.HasPrefix(u.s, "tag:"), strings.HasPrefix(u.s, "autogroup:"), u.s == "*", u.s == "":
				d.errorf(u.v, "tag owners must be users, groups or autogroup:admin, not %q", u.s)
				continue
			default:
				if err := checkUserName(u.s); err != nil {
					d.errorf(u.v, "%v", err)
					continue
				}
				d.noteUser(p, u.s, u.v)
			}
			owners = append(owners, u.s)
		}
		p.tagOwners[name] = owners
	})
}

func (d *decoder) hosts(p *Policy, v *hujson.Value) {
	o := d.object(v, "hosts")
	if o == nil {
		return
	}
	d.members(o, "host", func(name string, nv, v *hujson.Value) {
		if err := checkHostName(name); err != nil {
			d.errorf(nv, "%v", err)
			return
		}
		if g := p.groupOf(name); g != "" {
			d.errorf(nv, "host alias %q is also a user in %s; rename one of them", name, g)
			return
		}
		s, ok := d.stringValue(v, "host "+name)
		if !ok {
			return
		}
		pfx, looksIP, err := parseIPOrCIDR(s)
		if !looksIP {
			err = fmt.Errorf("host %s: %q is not an IP address or CIDR", name, s)
		}
		if err != nil {
			d.errorf(v, "%v", err)
			return
		}
		p.hosts[name] = pfx
	})
}

// groupOf returns a group that lists user, or "".
func (p *Policy) groupOf(user string) string {
	for g, members := range p.groups {
		if members[user] {
			return g
		}
	}
	return ""
}

// checkHostName checks a host alias: it must not be mistaken for another
// kind of selector.
func checkHostName(name string) error {
	switch {
	case name == "" || name == "*":
		return fmt.Errorf("bad host alias %q", name)
	case strings.HasPrefix(name, "group:"), strings.HasPrefix(name, "tag:"), strings.HasPrefix(name, "autogroup:"):
		return fmt.Errorf("host alias %q must not start with group:, tag: or autogroup:", name)
	case strings.ContainsAny(name, "@"):
		return fmt.Errorf("host alias %q must not contain '@'", name)
	}
	if _, looksIP, _ := parseIPOrCIDR(name); looksIP {
		return fmt.Errorf("host alias %q looks like an address", name)
	}
	return checkUserName(name)
}

// fieldSet decodes an object with a fixed set of fields, rejecting unknown
// and duplicate ones, and returns the values by name.
func (d *decoder) fieldSet(v *hujson.Value, what string, allowed ...string) map[string]*hujson.Value {
	o := d.object(v, what)
	if o == nil {
		return nil
	}
	out := map[string]*hujson.Value{}
	for i := range o.Members {
		m := &o.Members[i]
		name := d.str(&m.Name)
		if !containsStr(allowed, name) {
			d.errorf(&m.Name, "unknown field %q in %s (want %s)", name, what, strings.Join(allowed, ", "))
			continue
		}
		if out[name] != nil {
			d.errorf(&m.Name, "duplicate field %q in %s", name, what)
			continue
		}
		out[name] = &m.Value
	}
	return out
}

func containsStr(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (d *decoder) acls(p *Policy, v *hujson.Value) {
	a := d.array(v, "acls")
	if a == nil {
		return
	}
	for i := range a.Elements {
		e := &a.Elements[i]
		f := d.fieldSet(e, "acl", "action", "src", "dst", "proto")
		if f == nil {
			continue
		}
		r := rule{pos: d.pos(e)}
		ok := true
		if av := f["action"]; av == nil {
			d.errorf(e, `acl has no "action" (want "accept")`)
			ok = false
		} else if s, isStr := d.stringValue(av, "action"); !isStr {
			ok = false
		} else if s != "accept" {
			d.errorf(av, `bad action %q: only "accept" is supported`, s)
			ok = false
		}
		if pv := f["proto"]; pv != nil {
			if protos, good := d.proto(pv); good {
				r.protos = protos
			} else {
				ok = false
			}
		}
		if sv := f["src"]; sv == nil {
			d.errorf(e, `acl has no "src"`)
			ok = false
		} else {
			list, good := d.nonEmptyStrings(sv, "src")
			ok = ok && good
			for _, s := range list {
				sel, err := p.parseSelector(s.s, ctxSrc)
				if err != nil {
					d.errorf(s.v, "%v", err)
					ok = false
					continue
				}
				d.noteSelector(p, sel, s.v)
				r.src = append(r.src, sel)
			}
		}
		if dv := f["dst"]; dv == nil {
			d.errorf(e, `acl has no "dst"`)
			ok = false
		} else {
			list, good := d.nonEmptyStrings(dv, "dst")
			ok = ok && good
			for _, s := range list {
				de, err := p.parseDst(s.s, r.protos)
				if err != nil {
					d.errorf(s.v, "%v", err)
					ok = false
					continue
				}
				d.noteSelector(p, de.sel, s.v)
				r.dst = append(r.dst, de)
			}
		}
		if ok {
			p.acls = append(p.acls, r)
		}
	}
}

// parseDst parses an acls dst entry "selector:ports" for a rule allowing
// protos (nil: the defaults).
func (p *Policy) parseDst(s string, protos []int) (dstEntry, error) {
	host, ports, err := splitHostPorts(s)
	if err != nil {
		return dstEntry{}, err
	}
	sel, err := p.parseSelector(host, ctxDst)
	if err != nil {
		return dstEntry{}, err
	}
	prs, err := parsePorts(ports, false)
	if err != nil {
		return dstEntry{}, fmt.Errorf("%s: %w", s, err)
	}
	if protos != nil && !hasPorts(protos[0]) && (len(prs) != 1 || prs[0] != allPorts) {
		return dstEntry{}, fmt.Errorf("%s: protocol %d has no ports; use %s:*", s, protos[0], host)
	}
	return dstEntry{sel: sel, ports: prs}, nil
}

func (d *decoder) tests(p *Policy, v *hujson.Value) {
	a := d.array(v, "tests")
	if a == nil {
		return
	}
	for i := range a.Elements {
		e := &a.Elements[i]
		f := d.fieldSet(e, "test", "src", "proto", "accept", "deny")
		if f == nil {
			continue
		}
		t := test{pos: d.pos(e), proto: protoTCP}
		ok := true
		if sv := f["src"]; sv == nil {
			d.errorf(e, `test has no "src"`)
			ok = false
		} else if s, isStr := d.stringValue(sv, "test src"); !isStr {
			ok = false
		} else {
			sel, err := p.parseSelector(s, ctxTest)
			if err != nil {
				d.errorf(sv, "%v", err)
				ok = false
			}
			d.noteSelector(p, sel, sv)
			t.src, t.srcStr = sel, s
		}
		if pv := f["proto"]; pv != nil {
			if protos, good := d.proto(pv); good {
				t.proto = uint8(protos[0])
			} else {
				ok = false
			}
		}
		for _, which := range []string{"accept", "deny"} {
			dv := f[which]
			if dv == nil {
				continue
			}
			for _, s := range d.strings(dv, which) {
				td, err := p.parseTestDst(s.s)
				if err != nil {
					d.errorf(s.v, "%v", err)
					ok = false
					continue
				}
				d.noteSelector(p, td.sel, s.v)
				td.pos = d.pos(s.v)
				if which == "accept" {
					t.accept = append(t.accept, td)
				} else {
					t.deny = append(t.deny, td)
				}
			}
		}
		if f["accept"] == nil && f["deny"] == nil {
			d.errorf(e, `test has neither "accept" nor "deny"`)
			ok = false
		}
		if ok {
			p.tests = append(p.tests, t)
		}
	}
}

// parseTestDst parses a tests dst "selector:port" (one port).
func (p *Policy) parseTestDst(s string) (testDst, error) {
	host, port, err := splitHostPorts(s)
	if err != nil {
		return testDst{}, err
	}
	sel, err := p.parseSelector(host, ctxTest)
	if err != nil {
		return testDst{}, err
	}
	prs, err := parsePorts(port, true)
	if err != nil {
		return testDst{}, fmt.Errorf("%s: %w", s, err)
	}
	return testDst{str: s, sel: sel, port: prs[0].first}, nil
}

func (d *decoder) expose(p *Policy, v *hujson.Value) {
	a := d.array(v, "expose")
	if a == nil {
		return
	}
	for i := range a.Elements {
		e := &a.Elements[i]
		f := d.fieldSet(e, "expose entry", "src", "names")
		if f == nil {
			continue
		}
		var x exposeRule
		ok := true
		for _, field := range []string{"src", "names"} {
			if f[field] == nil {
				d.errorf(e, "expose entry has no %q", field)
				ok = false
				continue
			}
			list, good := d.nonEmptyStrings(f[field], field)
			ok = ok && good
			for _, s := range list {
				if field == "src" {
					sel, err := p.parseSelector(s.s, ctxSrc)
					if err != nil {
						d.errorf(s.v, "%v", err)
						ok = false
						continue
					}
					d.noteSelector(p, sel, s.v)
					x.src = append(x.src, sel)
					continue
				}
				name, err := checkExposeName(s.s)
				if err != nil {
					d.errorf(s.v, "%v", err)
					ok = false
					continue
				}
				x.names = append(x.names, name)
			}
		}
		if ok {
			p.expose = append(p.expose, x)
		}
	}
}

// checkExposeName checks an expose name pattern and returns it in lower
// case: "*", a DNS name, or a DNS name prefix followed by "*".
func checkExposeName(s string) (string, error) {
	if s == "*" {
		return s, nil
	}
	name := strings.ToLower(s)
	body := strings.TrimSuffix(name, "*")
	if body == "" || len(body) > 253 || strings.HasPrefix(body, ".") || strings.HasPrefix(body, "-") || strings.Contains(body, "..") {
		return "", fmt.Errorf("bad expose name %q: want \"*\", a DNS name or a prefix like \"app-*\"", s)
	}
	if body == name && (strings.HasSuffix(body, ".") || strings.HasSuffix(body, "-")) {
		return "", fmt.Errorf("bad expose name %q: want \"*\", a DNS name or a prefix like \"app-*\"", s)
	}
	for _, c := range body {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return "", fmt.Errorf("bad expose name %q: only letters, digits, '-', '.' and a final '*' are allowed", s)
		}
	}
	return name, nil
}
