// Command ambit-cni is the ambit chained CNI plugin: it tells the node's
// ztunnel about pod sandboxes and passes the previous result through. The
// installer (ztunnel/cni/install) puts it in the host's CNI bin directory.
package main

import "github.com/ambit-mesh/ambit/ztunnel/cni/plugin"

var version = "dev"

func main() { plugin.Main(version) }
