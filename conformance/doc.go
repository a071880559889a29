// Package conformance runs the Gateway API conformance suite
// (sigs.k8s.io/gateway-api/conformance, profiles MESH-HTTP and MESH-GRPC)
// against ambit in ambient mode on the devcluster. The runner is a test
// behind the build tag "conformance": see docs/conformance.md, or run
// `make conformance`.
package conformance
