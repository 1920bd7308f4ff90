package hostdns

import (
	"errors"
	"fmt"
)

// ErrBadDomain means a search or match domain is not a DNS name that may
// go into the resolver file or onto resolvectl's command line.
var ErrBadDomain = errors.New("hostdns: not a domain name")

// CheckDomain returns nil if d is a DNS name (one trailing dot allowed):
// at most 253 bytes of labels of 1-63 letters, digits, '-' and '_', none
// starting or ending with '-'. Anything else, whitespace and control
// characters above all (a newline would add lines to the resolver file; a
// leading '-' reads as an option to resolvectl), gets an error wrapping
// ErrBadDomain.
func CheckDomain(d string) error {
	n := d
	if len(n) > 0 && n[len(n)-1] == '.' {
		n = n[:len(n)-1]
	}
	if n == "" || len(n) > 253 {
		return fmt.Errorf("%w: %q", ErrBadDomain, d)
	}
	start := 0
	for i := 0; i <= len(n); i++ {
		if i < len(n) && n[i] != '.' {
			c := n[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%w: %q has the character %q", ErrBadDomain, d, c)
			}
			continue
		}
		l := n[start:i]
		switch {
		case l == "" || len(l) > 63:
			return fmt.Errorf("%w: %q has a label of %d bytes", ErrBadDomain, d, len(l))
		case l[0] == '-' || l[len(l)-1] == '-':
			return fmt.Errorf("%w: %q has a label that starts or ends with '-'", ErrBadDomain, d)
		}
		start = i + 1
	}
	return nil
}

// check returns an error if a domain of c fails CheckDomain.
func (c *Config) check() error {
	var errs []error
	for _, d := range c.SearchDomains {
		if err := CheckDomain(d); err != nil {
			errs = append(errs, fmt.Errorf("search domain: %w", err))
		}
	}
	for _, d := range c.MatchDomains {
		if err := CheckDomain(d); err != nil {
			errs = append(errs, fmt.Errorf("match domain: %w", err))
		}
	}
	return errors.Join(errs...)
}
