//go:build tools

// Package tools pins the versions of the developer tools the Makefile builds.
package tools

import (
	_ "google.golang.org/protobuf/cmd/protoc-gen-go"
	_ "honnef.co/go/tools/cmd/staticcheck"
)
