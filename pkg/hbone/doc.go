// Package hbone implements HBONE, the mesh's tunnel: TCP streams carried as
// HTTP/2 CONNECT requests inside mutual TLS, port 15008, with the real
// destination ip:port as :authority and SPIFFE identities on both ends.
//
// The client is golang.org/x/net/http2's ClientConn behind a pool keyed by
// (source identity, destination address, expected destination identity). The
// server is built on x/net/http2's Framer and hpack rather than net/http's
// handler model, because a net/http handler cannot end its half of a stream
// (END_STREAM) while still reading the other half, and TCP protocols that
// rely on FIN need exactly that.
package hbone

// Port is the standard HBONE port.
const Port = 15008
