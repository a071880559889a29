// Command istiod-lite is ambit's control plane: Kubernetes watches, xDS, and the mesh CA.
package main

import (
	"context"
	"os"

	"github.com/ambit-mesh/ambit/pkg/daemon"
)

func main() {
	os.Exit(daemon.Main("istiod-lite", os.Args[1:], nil, run))
}

// run is the component body; it serves until ctx is cancelled.
func run(ctx context.Context, p *daemon.Process) error {
	p.SetReady(true)
	p.Log.Info("started")
	<-ctx.Done()
	return nil
}
