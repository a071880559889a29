package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambit-mesh/ambit/istiod-lite/waypoint"
)

// labelUseWaypoint on a namespace (or service, pod) sends its traffic
// through the named waypoint (Istio's label).
const labelUseWaypoint = "istio.io/use-waypoint"

// kubeFlags are the connection flags of the commands that talk to a cluster.
type kubeFlags struct {
	kubeconfig string
	context    string
	namespace  string
}

func (f *kubeFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")
	cmd.PersistentFlags().StringVar(&f.context, "context", "", "kubeconfig context (default: the current context)")
	cmd.PersistentFlags().StringVarP(&f.namespace, "namespace", "n", "", "namespace (default: the context's namespace, else default)")
}

// waypointClients are the clients and namespace the waypoint commands use.
type waypointClients struct {
	kube      kubernetes.Interface
	gw        gatewayclient.Interface
	namespace string
	host      string
}

func (f *kubeFlags) clients() (*waypointClients, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: f.context}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "ambit-cli/" + version
	cfg.Timeout = 30 * time.Second
	ns := f.namespace
	if ns == "" {
		if ns, _, err = cc.Namespace(); err != nil {
			return nil, fmt.Errorf("kubeconfig: %w", err)
		}
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	gw, err := gatewayclient.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &waypointClients{kube: kube, gw: gw, namespace: ns, host: cfg.Host}, nil
}

// preflight explains what is missing before anything is written: an
// unreachable API server, the Gateway API CRDs, the istio-waypoint
// GatewayClass, and (when controlPlaneNS is set) the control plane.
func (c *waypointClients) preflight(ctx context.Context, controlPlaneNS string) error {
	_, err := c.kube.Discovery().ServerResourcesForGroupVersion(gatewayv1.GroupVersion.String())
	switch {
	case apierrors.IsNotFound(err):
		return fmt.Errorf("the Gateway API CRDs are not installed in the cluster at %s (%s is not served): install manifests/gateway-api (kubectl apply -k manifests/gateway-api)",
			c.host, gatewayv1.GroupVersion)
	case err != nil:
		return c.apiError(err)
	}
	if _, err := c.gw.GatewayV1().GatewayClasses().Get(ctx, waypoint.ClassName, metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return fmt.Errorf("GatewayClass %s not found: istiod-lite creates it; install it (kubectl apply -k manifests/istiod-lite) or apply manifests/gateway-api/gatewayclass-istio-waypoint.yaml", waypoint.ClassName)
	} else if err != nil && !apierrors.IsForbidden(err) {
		return c.apiError(err)
	}
	if controlPlaneNS == "" {
		return nil
	}
	if _, err := c.kube.CoreV1().Services(controlPlaneNS).Get(ctx, "istiod", metav1.GetOptions{}); apierrors.IsNotFound(err) {
		return fmt.Errorf("control plane not found: no Service istiod in namespace %s, so nothing would deploy the waypoint: install manifests/istiod-lite (kubectl apply -k manifests/istiod-lite)", controlPlaneNS)
	} else if err != nil && !apierrors.IsForbidden(err) {
		return c.apiError(err)
	}
	return nil
}

// apiError says that the API server could not be reached, when that is
// what err is, rather than a bare transport error.
func (c *waypointClients) apiError(err error) error {
	var status apierrors.APIStatus
	if errors.As(err, &status) {
		return err
	}
	return fmt.Errorf("cannot reach the Kubernetes API server at %s (check the kubeconfig and that the cluster is up): %w", c.host, err)
}

func newWaypointCommand() *cobra.Command {
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Deploy, list and delete waypoints (Gateways of class istio-waypoint)",
	}
	kf.register(cmd)
	cmd.AddCommand(newWaypointDeployCommand(&kf), newWaypointListCommand(&kf), newWaypointDeleteCommand(&kf))
	return cmd
}

type deployOptions struct {
	name            string
	trafficFor      string
	enrollNamespace bool
	wait            bool
	timeout         time.Duration
	controlPlaneNS  string
	pollInterval    time.Duration
}

func newWaypointDeployCommand(kf *kubeFlags) *cobra.Command {
	o := deployOptions{pollInterval: time.Second}
	cmd := &cobra.Command{
		Use:   "deploy",
		Short: "Deploy a waypoint in a namespace",
		Long: "Creates (or updates) a Gateway of class istio-waypoint with an HBONE listener on port 15008;\n" +
			"istiod-lite then deploys the waypoint and reports it Programmed when it is ready.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch o.trafficFor {
			case "service", "workload", "all", "none":
			default:
				return fmt.Errorf("--for %q: want service, workload, all or none", o.trafficFor)
			}
			c, err := kf.clients()
			if err != nil {
				return err
			}
			return deployWaypoint(cmd.Context(), cmd.OutOrStdout(), c, o)
		},
	}
	cmd.Flags().StringVar(&o.name, "name", "waypoint", "name of the waypoint (the Gateway)")
	cmd.Flags().StringVar(&o.trafficFor, "for", "service", "traffic the waypoint handles: service, workload, all or none (label "+waypoint.LabelWaypointFor+")")
	cmd.Flags().BoolVar(&o.enrollNamespace, "enroll-namespace", false, "label the namespace "+labelUseWaypoint+"=NAME so its traffic uses the waypoint")
	cmd.Flags().BoolVar(&o.wait, "wait", false, "wait until the waypoint is Programmed, showing progress")
	cmd.Flags().DurationVar(&o.timeout, "timeout", 2*time.Minute, "how long --wait waits")
	cmd.Flags().StringVar(&o.controlPlaneNS, "control-plane-namespace", "istio-system", "namespace of the control plane (Service istiod)")
	return cmd
}

func waypointGateway(ns string, o deployOptions) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: o.name, Namespace: ns, Labels: map[string]string{waypoint.LabelWaypointFor: o.trafficFor}},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: waypoint.ClassName,
			Listeners: []gatewayv1.Listener{{
				Name: "mesh", Port: waypoint.MeshPort, Protocol: waypoint.ProtocolHBONE,
			}},
		},
	}
}

func deployWaypoint(ctx context.Context, out io.Writer, c *waypointClients, o deployOptions) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := c.preflight(ctx, o.controlPlaneNS); err != nil {
		return err
	}
	ns := c.namespace
	want := waypointGateway(ns, o)
	gws := c.gw.GatewayV1().Gateways(ns)
	_, err := gws.Create(ctx, want, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		cur, err := gws.Get(ctx, o.name, metav1.GetOptions{})
		if err != nil {
			return c.apiError(err)
		}
		if cur.Spec.GatewayClassName != waypoint.ClassName {
			return fmt.Errorf("a Gateway %s/%s exists with class %q, not %s: choose another --name", ns, o.name, cur.Spec.GatewayClassName, waypoint.ClassName)
		}
		cur.Spec = want.Spec
		if cur.Labels == nil {
			cur.Labels = map[string]string{}
		}
		cur.Labels[waypoint.LabelWaypointFor] = o.trafficFor
		if _, err := gws.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			return c.apiError(err)
		}
		fmt.Fprintf(out, "waypoint %s/%s updated\n", ns, o.name)
	case err != nil:
		return c.apiError(err)
	default:
		fmt.Fprintf(out, "waypoint %s/%s created\n", ns, o.name)
	}
	if o.enrollNamespace {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, labelUseWaypoint, o.name)
		if _, err := c.kube.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			return fmt.Errorf("enroll namespace %s: %w", ns, c.apiError(err))
		}
		fmt.Fprintf(out, "namespace %s labelled %s=%s\n", ns, labelUseWaypoint, o.name)
	}
	if !o.wait {
		return nil
	}
	return waitProgrammed(ctx, out, c, ns, o.name, o.timeout, o.pollInterval)
}

// waitProgrammed polls the Gateway until its Programmed condition is True,
// printing each new state it reports.
func waitProgrammed(ctx context.Context, out io.Writer, c *waypointClients, ns, name string, timeout, every time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	last := ""
	for {
		g, err := c.gw.GatewayV1().Gateways(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil && ctx.Err() == nil {
			return c.apiError(err)
		}
		if err == nil {
			state := describeProgress(g)
			if p := meta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); p != nil &&
				p.Status == metav1.ConditionTrue && p.ObservedGeneration >= g.Generation {
				fmt.Fprintf(out, "waypoint %s/%s is programmed (address %s)\n", ns, name, address(g))
				return nil
			}
			if a := meta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionAccepted)); a != nil &&
				a.Status == metav1.ConditionFalse && a.ObservedGeneration >= g.Generation {
				return fmt.Errorf("waypoint %s/%s not accepted: %s: %s", ns, name, a.Reason, a.Message)
			}
			if state != last {
				fmt.Fprintf(out, "waiting for waypoint %s/%s: %s\n", ns, name, state)
				last = state
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waypoint %s/%s not programmed after %s (last state: %s)", ns, name, timeout, last)
		case <-time.After(every):
		}
	}
}

func describeProgress(g *gatewayv1.Gateway) string {
	p := meta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed))
	if p == nil || p.ObservedGeneration < g.Generation || p.Status == metav1.ConditionUnknown {
		return "waiting for the control plane to pick it up"
	}
	if p.Message != "" {
		return p.Reason + ": " + p.Message
	}
	return p.Reason
}

func address(g *gatewayv1.Gateway) string {
	for _, a := range g.Status.Addresses {
		if a.Type == nil || *a.Type == gatewayv1.IPAddressType {
			return a.Value
		}
	}
	if len(g.Status.Addresses) > 0 {
		return g.Status.Addresses[0].Value
	}
	return "-"
}

func newWaypointListCommand(kf *kubeFlags) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List waypoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := kf.clients()
			if err != nil {
				return err
			}
			ns := c.namespace
			if all {
				ns = metav1.NamespaceAll
			}
			return listWaypoints(cmd.Context(), cmd.OutOrStdout(), c, ns)
		},
	}
	cmd.Flags().BoolVarP(&all, "all-namespaces", "A", false, "list waypoints in every namespace")
	return cmd
}

func listWaypoints(ctx context.Context, out io.Writer, c *waypointClients, ns string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := c.preflight(ctx, ""); err != nil {
		return err
	}
	list, err := c.gw.GatewayV1().Gateways(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return c.apiError(err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tTRAFFIC-FOR\tPROGRAMMED\tADDRESS")
	for i := range list.Items {
		g := &list.Items[i]
		if g.Spec.GatewayClassName != waypoint.ClassName {
			continue
		}
		trafficFor := g.Labels[waypoint.LabelWaypointFor]
		if trafficFor == "" {
			trafficFor = "service"
		}
		programmed := "Unknown"
		if p := meta.FindStatusCondition(g.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); p != nil {
			programmed = string(p.Status)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Namespace, g.Name, trafficFor, programmed, address(g))
	}
	return tw.Flush()
}

func newWaypointDeleteCommand(kf *kubeFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "delete NAME...",
		Short: "Delete waypoints (istiod-lite removes what it deployed for them)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := kf.clients()
			if err != nil {
				return err
			}
			return deleteWaypoints(cmd.Context(), cmd.OutOrStdout(), c, args)
		},
	}
}

func deleteWaypoints(ctx context.Context, out io.Writer, c *waypointClients, names []string) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if err := c.preflight(ctx, ""); err != nil {
		return err
	}
	gws := c.gw.GatewayV1().Gateways(c.namespace)
	var errs []error
	for _, name := range names {
		g, err := gws.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("waypoint %s/%s not found", c.namespace, name))
			continue
		} else if err != nil {
			errs = append(errs, c.apiError(err))
			continue
		}
		if g.Spec.GatewayClassName != waypoint.ClassName {
			errs = append(errs, fmt.Errorf("the Gateway %s/%s is of class %q, not a waypoint: not deleted", c.namespace, name, g.Spec.GatewayClassName))
			continue
		}
		err = gws.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &g.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, c.apiError(err))
			continue
		}
		fmt.Fprintf(out, "waypoint %s/%s deleted\n", c.namespace, name)
		if ns, err := c.kube.CoreV1().Namespaces().Get(ctx, c.namespace, metav1.GetOptions{}); err == nil && ns.Labels[labelUseWaypoint] == name {
			fmt.Fprintf(out, "note: namespace %s still has %s=%s (kubectl label namespace %s %s-)\n", c.namespace, labelUseWaypoint, name, c.namespace, labelUseWaypoint)
		}
	}
	return errors.Join(errs...)
}
