// Package identity models ambit workload identities: SPIFFE IDs of the Kubernetes
// form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
package identity

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// DefaultTrustDomain is the trust domain used when none is configured, as in Istio.
const DefaultTrustDomain = "cluster.local"

// Kubernetes name limits: namespaces are DNS-1123 labels, service accounts
// DNS-1123 subdomains.
const (
	maxNamespaceLen      = 63
	maxServiceAccountLen = 253
	// maxIDLen bounds the whole ID, as the SPIFFE spec recommends (2048 bytes).
	maxIDLen = 2048
)

// Identity is a workload identity. The zero value is invalid.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// New validates and returns an identity.
func New(trustDomain, namespace, serviceAccount string) (Identity, error) {
	id := Identity{TrustDomain: trustDomain, Namespace: namespace, ServiceAccount: serviceAccount}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	return id, nil
}

// Validate reports why id is not a well-formed workload identity, or nil.
func (id Identity) Validate() error {
	// TrustDomainFromString also accepts a whole spiffe:// URI; insist on a bare name.
	// Empty dot-separated labels ("a..b", ".x", "x.") are refused too: X.509
	// parsers reject such URI hosts, so no certificate could carry the ID.
	if td, err := spiffeid.TrustDomainFromString(id.TrustDomain); err != nil || td.Name() != id.TrustDomain || hasEmptyLabel(id.TrustDomain) {
		return fmt.Errorf("invalid trust domain %q: want non-empty dot-separated labels of lowercase letters, digits, '-' or '_'", truncate(id.TrustDomain))
	}
	if err := validateDNSLabel(id.Namespace, maxNamespaceLen); err != nil {
		return fmt.Errorf("invalid namespace %q: %w", truncate(id.Namespace), err)
	}
	if err := validateDNSSubdomain(id.ServiceAccount, maxServiceAccountLen); err != nil {
		return fmt.Errorf("invalid service account %q: %w", truncate(id.ServiceAccount), err)
	}
	// Keep New/Validate consistent with Parse, which refuses longer IDs.
	if n := len(id.String()); n > maxIDLen {
		return fmt.Errorf("invalid SPIFFE ID: %d bytes, longer than %d", n, maxIDLen)
	}
	return nil
}

func hasEmptyLabel(s string) bool {
	for _, label := range strings.Split(s, ".") {
		if label == "" {
			return true
		}
	}
	return false
}

// String formats id as a SPIFFE URI.
func (id Identity) String() string {
	return "spiffe://" + id.TrustDomain + "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount
}

// URL returns id as a URL, the form certificates carry in their URI SAN.
func (id Identity) URL() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// IsZero reports whether id is the zero value.
func (id Identity) IsZero() bool { return id == Identity{} }

// Parse parses a SPIFFE ID of the form spiffe://<td>/ns/<ns>/sa/<sa>. It
// rejects anything else (other paths, query, fragment, port, user info,
// percent-encoding, uppercase) with an error saying why.
func Parse(s string) (Identity, error) {
	if len(s) > maxIDLen {
		return Identity{}, fmt.Errorf("invalid SPIFFE ID: longer than %d bytes", maxIDLen)
	}
	sid, err := spiffeid.FromString(s)
	if err != nil {
		return Identity{}, fmt.Errorf("invalid SPIFFE ID %q: %w", truncate(s), err)
	}
	return FromSPIFFEID(sid)
}

// FromSPIFFEID converts a parsed SPIFFE ID into a workload identity.
func FromSPIFFEID(sid spiffeid.ID) (Identity, error) {
	segs := strings.Split(strings.TrimPrefix(sid.Path(), "/"), "/")
	if len(segs) != 4 || segs[0] != "ns" || segs[2] != "sa" {
		return Identity{}, fmt.Errorf("invalid SPIFFE ID %q: path must be /ns/<namespace>/sa/<service-account>", truncate(sid.String()))
	}
	id := Identity{TrustDomain: sid.TrustDomain().Name(), Namespace: segs[1], ServiceAccount: segs[3]}
	if err := id.Validate(); err != nil {
		return Identity{}, fmt.Errorf("invalid SPIFFE ID %q: %w", truncate(sid.String()), err)
	}
	return id, nil
}

// FromURIs extracts the one identity a certificate carries. Certificates with
// zero or several URI SANs are rejected: an identity must be unambiguous.
func FromURIs(uris []*url.URL) (Identity, error) {
	if len(uris) != 1 {
		return Identity{}, fmt.Errorf("certificate must carry exactly one URI SAN, has %d", len(uris))
	}
	return Parse(uris[0].String())
}

var (
	errEmpty     = errors.New("must not be empty")
	errTooLong   = errors.New("too long")
	errCharacter = errors.New("must consist of lowercase letters, digits and '-', starting and ending with a letter or digit")
)

func validateDNSLabel(s string, maxLen int) error {
	switch {
	case s == "":
		return errEmpty
	case len(s) > maxLen:
		return errTooLong
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
		if !alnum && (c != '-' || i == 0 || i == len(s)-1) {
			return errCharacter
		}
	}
	return nil
}

func validateDNSSubdomain(s string, maxLen int) error {
	switch {
	case s == "":
		return errEmpty
	case len(s) > maxLen:
		return errTooLong
	}
	for _, label := range strings.Split(s, ".") {
		if err := validateDNSLabel(label, maxLen); err != nil {
			return fmt.Errorf("dot-separated parts %w", err)
		}
	}
	return nil
}

// truncate keeps hostile input from flooding logs and error messages.
func truncate(s string) string {
	const limit = 128
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}
