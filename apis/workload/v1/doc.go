// Package workloadv1 is ambit's workload discovery API: the resources
// istiod-lite serves to ztunnel over delta ADS. The types are generated from
// workload.proto and authorization.proto in this directory by `make generate`;
// this file holds the hand-written constants. See docs/workload-api.md.
package workloadv1

// xDS resource type URLs. They equal the TypeUrl that anypb.New gives for the
// corresponding message (checked by a test).
const (
	// AddressTypeURL is the type of Address resources (a Workload or a
	// Service). Names: a workload uid, or "<namespace>/<hostname>" for a
	// service; alias names "<network>/<ip>" for lookups by IP.
	AddressTypeURL = "type.googleapis.com/ambit.workload.v1.Address"
	// AuthorizationTypeURL is the type of Authorization resources. Names:
	// "<namespace>/<name>".
	AuthorizationTypeURL = "type.googleapis.com/ambit.workload.v1.Authorization"
)
