package controller

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	workloadv1 "github.com/ambit-mesh/ambit/apis/workload/v1"
	"github.com/ambit-mesh/ambit/istiod-lite/xds"
)

// AuthorizationScope gives each node's ztunnel the authorizations that can
// apply to a workload it captures: GLOBAL ones, NAMESPACE ones of the
// namespaces it has captured workloads in, and WORKLOAD_SELECTOR ones that
// one of its workloads lists. Every node still gets every address: any pod
// may be a destination. Policies are enforced at the destination, so a
// node without workloads of a namespace never needs its policies, and a
// policy change reaches only the nodes it concerns.
var AuthorizationScope = &xds.NodeScope{
	Types:  []string{workloadv1.AuthorizationTypeURL},
	Select: selectAuthorizations,
}

func selectAuthorizations(resources func(string) map[string]types.Resource) func(node, typeURL, name string) bool {
	type nodeView struct {
		namespaces map[string]bool
		policies   map[string]bool
	}
	nodes := map[string]*nodeView{}
	for _, r := range resources(workloadv1.AddressTypeURL) {
		a, ok := r.(*workloadv1.Address)
		if !ok {
			continue
		}
		w := a.GetWorkload()
		if w == nil || w.GetNode() == "" || w.GetTunnelProtocol() != workloadv1.TunnelProtocol_HBONE {
			continue
		}
		v := nodes[w.GetNode()]
		if v == nil {
			v = &nodeView{namespaces: map[string]bool{}, policies: map[string]bool{}}
			nodes[w.GetNode()] = v
		}
		v.namespaces[w.GetNamespace()] = true
		for _, p := range w.GetAuthorizationPolicies() {
			v.policies[p] = true
		}
	}
	auths := resources(workloadv1.AuthorizationTypeURL)
	return func(node, typeURL, name string) bool {
		v := nodes[node]
		if v == nil {
			return false
		}
		p, ok := auths[name].(*workloadv1.Authorization)
		if !ok {
			return false
		}
		switch p.GetScope() {
		case workloadv1.AuthorizationScope_GLOBAL:
			return true
		case workloadv1.AuthorizationScope_NAMESPACE:
			return v.namespaces[p.GetNamespace()]
		default:
			return v.policies[name]
		}
	}
}
