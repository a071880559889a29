// Package kubeclient builds the Kubernetes client configuration every
// component starts from: a kubeconfig file when given, else the in-cluster
// configuration of the pod's ServiceAccount.
package kubeclient

import (
	"fmt"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Config returns the configuration for kubeconfig (empty: in-cluster),
// identifying itself as userAgent.
func Config(kubeconfig, userAgent string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes config: %w", err)
	}
	cfg.UserAgent = userAgent
	return cfg, nil
}
