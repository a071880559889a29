package ambient

import (
	"maps"
	"slices"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
)

// Changes are the resources an Index operation changed: what the xDS server
// must push. Names are resource names (docs/workload-api.md). The messages
// are shared with the Index and must not be modified.
type Changes struct {
	// Addresses upserted, by name (workload uid, or "<namespace>/<hostname>").
	Addresses map[string]*workloadv1.Address
	// RemovedAddresses, sorted.
	RemovedAddresses []string
	// Authorizations upserted, by "<namespace>/<name>".
	Authorizations map[string]*workloadv1.Authorization
	// RemovedAuthorizations, sorted.
	RemovedAuthorizations []string
}

// Empty reports whether nothing changed.
func (c Changes) Empty() bool {
	return len(c.Addresses) == 0 && len(c.RemovedAddresses) == 0 &&
		len(c.Authorizations) == 0 && len(c.RemovedAuthorizations) == 0
}

// Merge folds later changes into c, as if both had happened in order: a
// resource upserted then removed is removed, removed then upserted is
// upserted. Useful to coalesce a burst of events before one push.
func (c *Changes) Merge(later Changes) {
	c.Addresses, c.RemovedAddresses = mergeKind(c.Addresses, c.RemovedAddresses, later.Addresses, later.RemovedAddresses)
	c.Authorizations, c.RemovedAuthorizations = mergeKind(c.Authorizations, c.RemovedAuthorizations, later.Authorizations, later.RemovedAuthorizations)
}

func mergeKind[T any](up map[string]T, rm []string, laterUp map[string]T, laterRm []string) (map[string]T, []string) {
	if len(laterUp) == 0 && len(laterRm) == 0 {
		return up, rm
	}
	removed := make(map[string]struct{}, len(rm)+len(laterRm))
	for _, n := range rm {
		removed[n] = struct{}{}
	}
	if up == nil && len(laterUp) > 0 {
		up = make(map[string]T, len(laterUp))
	}
	for n, v := range laterUp {
		up[n] = v
		delete(removed, n)
	}
	for _, n := range laterRm {
		delete(up, n)
		removed[n] = struct{}{}
	}
	if len(up) == 0 {
		up = nil
	}
	return up, sortedSet(removed)
}

func sortedSet(s map[string]struct{}) []string {
	if len(s) == 0 {
		return nil
	}
	return slices.Sorted(maps.Keys(s))
}

// changeBuilder accumulates the changes of one Index operation.
type changeBuilder struct {
	addrs   map[string]*workloadv1.Address
	rmAddrs map[string]struct{}
	auths   map[string]*workloadv1.Authorization
	rmAuths map[string]struct{}
}

func (b *changeBuilder) upsertAddress(name string, a *workloadv1.Address) {
	if b.addrs == nil {
		b.addrs = map[string]*workloadv1.Address{}
	}
	b.addrs[name] = a
	delete(b.rmAddrs, name)
}

func (b *changeBuilder) removeAddress(name string) {
	if b.rmAddrs == nil {
		b.rmAddrs = map[string]struct{}{}
	}
	b.rmAddrs[name] = struct{}{}
	delete(b.addrs, name)
}

func (b *changeBuilder) upsertAuthorization(name string, a *workloadv1.Authorization) {
	if b.auths == nil {
		b.auths = map[string]*workloadv1.Authorization{}
	}
	b.auths[name] = a
	delete(b.rmAuths, name)
}

func (b *changeBuilder) removeAuthorization(name string) {
	if b.rmAuths == nil {
		b.rmAuths = map[string]struct{}{}
	}
	b.rmAuths[name] = struct{}{}
	delete(b.auths, name)
}

func (b *changeBuilder) changes() Changes {
	return Changes{
		Addresses:             b.addrs,
		RemovedAddresses:      sortedSet(b.rmAddrs),
		Authorizations:        b.auths,
		RemovedAuthorizations: sortedSet(b.rmAuths),
	}
}
