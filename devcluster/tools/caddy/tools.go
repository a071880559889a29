//go:build tools

// Package tools pins Caddy, one of the two reverse proxies the waypoint's
// HTTP engine is compared with on loopback (make bench-l7,
// devcluster/cmd/l7bench).
package tools

import _ "github.com/caddyserver/caddy/v2/cmd/caddy"
