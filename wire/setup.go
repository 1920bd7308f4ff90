package wire

import (
	"net/netip"
	"time"
)

// ServerSetup is a public server's setup as a setup check needs it: the
// domain, the public addresses, the ports that must answer there, and
// where the wildcard certificate stands. GET PathServerSetup answers it
// to anyone, since a device checks the server from outside before it
// joins; but only a caller with the admin token gets CertStatus's fields
// past Name and State.
type ServerSetup struct {
	// Domain is the edge domain, delegated to the server's zone.
	Domain string `json:"domain"`
	// PublicIPs are the addresses the zone gives the domain.
	PublicIPs []netip.Addr `json:"public_ips,omitempty"`
	// The ports of the public listeners; 0 means not served.
	CoordinatorPort uint16 `json:"coordinator_port,omitempty"`
	DNSPort         uint16 `json:"dns_port,omitempty"`
	HTTPPort        uint16 `json:"http_port,omitempty"`
	HTTPSPort       uint16 `json:"https_port,omitempty"`
	STUNPort        uint16 `json:"stun_port,omitempty"`
	STUNAltPort     uint16 `json:"stun_alt_port,omitempty"`
	// Certificate is the wildcard certificate's status; nil when the
	// server gets no certificate by ACME.
	Certificate *CertStatus `json:"certificate,omitempty"`
}

// CertStatus is where a server's wildcard certificate stands.
type CertStatus struct {
	// Name is the certificate's name, "*.DOMAIN".
	Name string `json:"name"`
	// CA is the ACME directory URL.
	CA string `json:"ca,omitempty"`
	// State is "pending" until the first order ends, then "issued" or
	// "failed" (a failed order is retried with backoff).
	State string `json:"state"`
	// Orders counts the orders started since the server started.
	Orders int `json:"orders,omitempty"`
	// Problem is the ACME problem type of the last failure without its
	// "urn:ietf:params:acme:error:" prefix ("unauthorized", "dns",
	// "rateLimited", ...); empty when the CA gave none (it could not be
	// reached) or nothing failed.
	Problem string `json:"problem,omitempty"`
	// Error is the last failure; empty when nothing failed since the
	// certificate was last issued.
	Error string `json:"error,omitempty"`
	// Changed is when the status last changed.
	Changed time.Time `json:"changed,omitzero"`
}

// The states of CertStatus.
const (
	CertPending = "pending"
	CertIssued  = "issued"
	CertFailed  = "failed"
)
