package proxier

import "github.com/kipvs/kipvs/endpoints"

// selectEndpoints picks the endpoints a Service port uses. Until endpoints.Select
// lands this keeps ready endpoints, falling back to serving-terminating ones when
// none is ready (kube-proxy's CategorizeEndpoints fallback).
func selectEndpoints(sp *endpoints.ServicePort, eps []*endpoints.Endpoint, node *NodeInfo) selected {
	var ready, terminating []*endpoints.Endpoint
	for _, ep := range eps {
		switch {
		case ep.Ready:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) == 0 {
		ready = terminating
	}
	return selected{internal: ready, external: ready}
}
