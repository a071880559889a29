// Command waypoint is ambit's optional L7 proxy, configured by istiod-lite over Envoy xDS.
package main

import (
	"context"
	"os"

	"github.com/ambit-mesh/ambit/pkg/daemon"
)

func main() {
	os.Exit(daemon.Main("waypoint", os.Args[1:], nil, run))
}

// run is the component body; it serves until ctx is cancelled.
func run(ctx context.Context, p *daemon.Process) error {
	p.SetReady(true)
	p.Log.Info("started")
	<-ctx.Done()
	return nil
}
