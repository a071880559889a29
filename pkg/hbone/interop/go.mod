// Interop tests against Istio's Go HBONE implementation. A separate module so
// istio.io/istio's dependency tree stays out of ambit's go.mod.
module github.com/ambit-mesh/ambit/pkg/hbone/interop

go 1.26.8

replace github.com/ambit-mesh/ambit => ../../..

replace istio.io/api => istio.io/api v1.31.1

require (
	github.com/ambit-mesh/ambit v0.0.0-00010101000000-000000000000
	istio.io/istio v0.0.0-20260827124520-eed52ebb66ad
)

require (
	github.com/cbeuw/connutil v1.0.1 // indirect
	github.com/go-jose/go-jose/v4 v4.1.5 // indirect
	github.com/go-logr/logr v1.4.4 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.10 // indirect
	github.com/spiffe/go-spiffe/v2 v2.9.0 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260928230214-8a89bd6388cc // indirect
	google.golang.org/grpc v1.84.0 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
	gopkg.in/natefinch/lumberjack.v2 v2.2.1 // indirect
	istio.io/api v1.31.1 // indirect
	k8s.io/klog/v2 v2.140.0 // indirect
)
