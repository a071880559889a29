// Package interop holds tests proving ambit's HBONE speaks the same protocol
// as Istio's Go implementation (istio.io/istio/pkg/hbone).
package interop
