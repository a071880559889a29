//go:build tools

// Package tools pins the CoreDNS command devcluster builds.
package tools

import _ "github.com/coredns/coredns"
