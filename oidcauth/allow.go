package oidcauth

import (
	"fmt"
	"strings"
)

// Allow says who may pass, as a list of rules any one of which suffices:
//
//	email:alice@example.com   that address
//	email:*@example.com       any address at example.com
//	group:eng                 members of the provider's group "eng"
//
// Email rules match only an email the provider says is verified
// (email_verified true).
// The zero Allow lets nobody pass.
type Allow struct {
	emails  map[string]bool
	domains map[string]bool
	groups  map[string]bool
}

// ParseAllow parses rules; empty strings are skipped.
func ParseAllow(rules []string) (*Allow, error) {
	a := &Allow{emails: map[string]bool{}, domains: map[string]bool{}, groups: map[string]bool{}}
	for _, r := range rules {
		r = strings.TrimSpace(r)
		kind, v, ok := strings.Cut(r, ":")
		switch {
		case r == "":
		case ok && kind == "email" && strings.HasPrefix(v, "*@") && validDomain(v[2:]):
			a.domains[strings.ToLower(v[2:])] = true
		case ok && kind == "email" && strings.Count(v, "@") == 1 && !strings.ContainsAny(v, "* \t") && !strings.HasPrefix(v, "@"):
			a.emails[strings.ToLower(v)] = true
		case ok && kind == "group" && v != "" && !strings.ContainsAny(v, " \t"):
			a.groups[v] = true
		default:
			return nil, fmt.Errorf("oidcauth: bad rule %q: want email:ADDRESS, email:*@DOMAIN or group:NAME", r)
		}
	}
	return a, nil
}

func validDomain(d string) bool {
	return d != "" && !strings.ContainsAny(d, "@* \t/") && !strings.HasPrefix(d, ".")
}

// Empty reports whether a lets nobody pass.
func (a *Allow) Empty() bool {
	return a == nil || len(a.emails)+len(a.domains)+len(a.groups) == 0
}

// Permits reports whether id passes one of a's rules.
func (a *Allow) Permits(id *Identity) bool {
	if a == nil || id == nil {
		return false
	}
	for _, g := range id.Groups {
		if a.groups[g] {
			return true
		}
	}
	if id.Email == "" || !id.EmailVerified {
		return false
	}
	e := strings.ToLower(id.Email)
	if a.emails[e] {
		return true
	}
	at := strings.LastIndexByte(e, '@')
	return at > 0 && a.domains[e[at+1:]]
}
