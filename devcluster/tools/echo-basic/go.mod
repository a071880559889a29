module github.com/ambit-mesh/ambit/devcluster/tools/echo-basic

go 1.26.0

require sigs.k8s.io/gateway-api v1.4.0
