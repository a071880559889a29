//go:build conformance

package conformance

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/gateway-api/apis/v1alpha2"
	"sigs.k8s.io/gateway-api/apis/v1alpha3"
	xv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gwconformance "sigs.k8s.io/gateway-api/conformance"
	confv1 "sigs.k8s.io/gateway-api/conformance/apis/v1"
	"sigs.k8s.io/gateway-api/conformance/tests"
	"sigs.k8s.io/gateway-api/conformance/utils/config"
	"sigs.k8s.io/gateway-api/conformance/utils/suite"
	"sigs.k8s.io/gateway-api/pkg/features"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/devcluster/devkube"
)

// TestMain brings the devcluster up when DEVCLUSTER_START=1 (what `make
// conformance` sets) and refreshes ambit's images on a running one, as the
// e2e tests do.
func TestMain(m *testing.M) { os.Exit(devkube.Main(m)) }

const (
	// meshNamespace is where the suite's mesh tests run (suite.MeshNamespace).
	meshNamespace = "gateway-conformance-mesh"
	waypointName  = "waypoint"

	implOrganization = "ambit-mesh"
	implProject      = "ambit"
	implURL          = "https://github.com/ambit-mesh/ambit"
	implContact      = "https://github.com/ambit-mesh/ambit/issues"
	reportName       = "ambit-mesh.yaml"

	// The mesh manifests of gateway-api v1.6.3 run this image; devcluster
	// builds Istio's echo app (what echo-advanced is) under its older
	// name, so the runner tags it under this one on every node.
	echoAdvancedImage       = "registry.k8s.io/gateway-api/echo-advanced:v1.5.1"
	devclusterEchoAdvanced  = "registry.k8s.io/gateway-api/conformance/echo-advanced:v0.1.0"
	waypointProgrammedLimit = 3 * time.Minute
)

// supportedFeatures are the features of the MESH-HTTP and MESH-GRPC
// profiles (core and extended), plus the features outside the profiles
// that mesh tests of the suite also require (HTTPRouteResponseHeaderModification,
// HTTPRouteParentRefPort, HTTPRoute303/307/308RedirectStatusCode), so
// that every mesh test runs. The second result lists those extras.
func supportedFeatures() (all, extra []features.FeatureName) {
	s := sets.New[features.FeatureName]()
	for _, p := range []suite.ConformanceProfile{suite.MeshHTTPConformanceProfile, suite.MeshGRPCConformanceProfile} {
		s.Insert(p.CoreFeatures.UnsortedList()...)
		s.Insert(p.ExtendedFeatures.UnsortedList()...)
	}
	more := sets.New[features.FeatureName]()
	for _, ct := range tests.ConformanceTests {
		if slices.Contains(ct.Features, features.SupportMesh) && !slices.Contains(ct.Features, features.SupportGateway) {
			more.Insert(ct.Features...)
		}
	}
	extra = sets.List(more.Difference(s))
	return sets.List(s.Union(more)), extra
}

func repoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

// version is the implementation version in the report: $AMBIT_VERSION
// (the Makefile passes its VERSION), else `git describe`.
func version() string {
	if v := os.Getenv("AMBIT_VERSION"); v != "" {
		return v
	}
	out, err := exec.Command("git", "-C", repoDir(), "describe", "--always", "--dirty").Output()
	if v := strings.TrimSpace(string(out)); err == nil && v != "" {
		return v
	}
	return "dev"
}

func TestConformance(t *testing.T) {
	start := time.Now()
	log.SetLogger(zap.New(zap.WriteTo(os.Stdout), zap.UseDevMode(true)))
	c := devkube.Get(t)

	aliasEchoImage(t, c)
	installAmbit(t, c)
	waitNamespacesGone(t, c)

	cl, err := client.New(c.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, install := range []func(*k8sruntime.Scheme) error{v1alpha3.Install, v1alpha2.Install, xv1alpha1.Install, gatewayv1.Install, apiextensionsv1.AddToScheme} {
		if err := install(cl.Scheme()); err != nil {
			t.Fatal(err)
		}
	}

	timeouts := config.DefaultTimeoutConfig()
	feats, extra := supportedFeatures()
	keep := os.Getenv("CONFORMANCE_KEEP") == "1"
	opts := suite.ConformanceOptions{
		ConfigurableOptions: suite.ConfigurableOptions{
			Debug:                os.Getenv("CONFORMANCE_DEBUG") == "1",
			NamespaceLabels:      map[string]string{"istio.io/dataplane-mode": "ambient"},
			CleanupBaseResources: !keep,
			CleanupTestResources: !keep,
			SupportedFeatures:    feats,
			TimeoutConfig:        timeouts,
			RunTest:              os.Getenv("CONFORMANCE_RUN_TEST"),
			Mode:                 "ambient",
			Implementation: confv1.Implementation{
				Organization: implOrganization,
				Project:      implProject,
				URL:          implURL,
				Version:      version(),
				Contact:      []string{implContact},
			},
			ConformanceProfiles: []suite.ConformanceProfileName{suite.MeshHTTPConformanceProfileName, suite.MeshGRPCConformanceProfileName},
		},
		Client:     cl,
		Clientset:  c.Client,
		RestConfig: c.Config,
		ManifestFS: []fs.FS{&gwconformance.Manifests},
	}
	if err := opts.Implementation.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Logf("supported features: %v (outside the mesh profiles, required by mesh tests: %v)", opts.SupportedFeatures, extra)

	var (
		mu      sync.Mutex
		results = map[string]string{}
		timing  = map[string]time.Duration{}
		began   = map[string]time.Time{}
	)
	supported := sets.New(opts.SupportedFeatures...)
	opts.Hook = func(st *testing.T, test suite.ConformanceTest, _ *suite.ConformanceTestSuite) {
		r := "PASS"
		switch {
		case st.Failed():
			r = "FAIL"
		case st.Skipped() && (!supported.HasAll(test.Features...) || opts.RunTest != "" && opts.RunTest != test.ShortName):
			r = "NOTRUN"
		case st.Skipped():
			r = "SKIP"
		}
		mu.Lock()
		results[test.ShortName] = r
		if b, ok := began[test.ShortName]; ok {
			timing[test.ShortName] = time.Since(b)
		}
		mu.Unlock()
	}
	// Record when each test starts (the hook only sees the end).
	all := make([]suite.ConformanceTest, len(tests.ConformanceTests))
	for i, ct := range tests.ConformanceTests {
		run := ct.Test
		name := ct.ShortName
		ct.Test = func(t *testing.T, s *suite.ConformanceTestSuite) {
			mu.Lock()
			began[name] = time.Now()
			mu.Unlock()
			run(t, s)
		}
		all[i] = ct
	}

	cs, err := suite.NewConformanceTestSuite(opts)
	if err != nil {
		t.Fatalf("conformance suite: %v", err)
	}

	// The report can only be made once Run's own cleanup has marked the
	// suite as not running: cleanups run last-registered first.
	var (
		ran     bool
		runTime time.Duration
	)
	t.Cleanup(func() {
		if !ran {
			return // failed before Run: no report, the previous one stays
		}
		report, err := cs.Report()
		if err != nil {
			t.Errorf("conformance report: %v", err)
			return
		}
		path := "(not written: CONFORMANCE_RUN_TEST ran one test; set CONFORMANCE_REPORT_DIR to write it)"
		if opts.RunTest == "" || os.Getenv("CONFORMANCE_REPORT_DIR") != "" {
			path = writeReport(t, report)
		}
		summarize(t, results, timing, report, path, time.Since(start), runTime)
	})

	setupStart := time.Now()
	cs.Setup(t, all)
	t.Logf("suite setup: %s", time.Since(setupStart).Round(time.Second))

	wpStart := time.Now()
	deployWaypoint(t, c, cl)
	t.Logf("waypoint programmed and namespace enrolled: %s", time.Since(wpStart).Round(time.Second))

	runStart := time.Now()
	ran = true
	if err := cs.Run(t, all); err != nil {
		t.Errorf("conformance run: %v", err)
	}
	runTime = time.Since(runStart)
}

// aliasEchoImage tags devcluster's echo-advanced image as the name the
// suite's mesh manifests use, on every node (idempotent). Needs root, as
// the devcluster does.
func aliasEchoImage(t *testing.T, c *devkube.Cluster) {
	t.Helper()
	ctr := os.Getenv("CTR")
	if out, err := exec.Command(filepath.Join(devkube.Dir(), "scripts", "env.sh")).Output(); ctr == "" && err == nil {
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, "CTR="); ok {
				ctr = v
			}
		}
	}
	if ctr == "" {
		t.Fatal("ctr not found (devcluster/scripts/env.sh prints CTR)")
	}
	runDir := os.Getenv("DEVCLUSTER_RUN")
	if runDir == "" {
		runDir = "/run/ambit-devcluster"
	}
	for n := 1; n <= c.Nodes; n++ {
		sock := filepath.Join(runDir, fmt.Sprintf("n%d", n), "containerd.sock")
		base := []string{"-a", sock, "-n", "k8s.io", "images"}
		if out, err := exec.Command(ctr, append(base, "tag", "--force", devclusterEchoAdvanced, echoAdvancedImage)...).CombinedOutput(); err != nil {
			t.Fatalf("node %d: ctr images tag %s %s: %v\n%s", n, devclusterEchoAdvanced, echoAdvancedImage, err, out)
		}
		if out, err := exec.Command(ctr, append(base, "label", echoAdvancedImage, "io.cri-containerd.pinned=pinned")...).CombinedOutput(); err != nil {
			t.Fatalf("node %d: ctr images label %s: %v\n%s", n, echoAdvancedImage, err, out)
		}
	}
}

// installAmbit installs ambit as the e2e tests do: kubectl apply -k
// manifests/devcluster (the Gateway API CRDs, istiod-lite, which creates
// the istio-waypoint GatewayClass, and ztunnel), then waits for istiod-lite
// and ztunnel. When the Gateway API CRDs were new, istiod-lite is restarted
// once they are established, so that it watches Gateways whatever the
// order in which they came up.
func installAmbit(t *testing.T, c *devkube.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, crdErr := c.Kubectl(ctx, "", "get", "crd", "gateways.gateway.networking.k8s.io")

	dir := filepath.Join(repoDir(), "manifests", "devcluster")
	if out, err := c.Kubectl(ctx, "", "apply", "-k", dir); err != nil {
		t.Fatalf("kubectl apply -k %s: %v\n%s", dir, err, out)
	}
	if out, err := c.Kubectl(ctx, "", "wait", "--for=condition=Established", "--timeout=60s",
		"crd/gateways.gateway.networking.k8s.io", "crd/gatewayclasses.gateway.networking.k8s.io",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io",
		"crd/referencegrants.gateway.networking.k8s.io"); err != nil {
		t.Fatalf("Gateway API CRDs (manifests/devcluster includes manifests/gateway-api) not established: %v\n%s", err, out)
	}
	if crdErr != nil {
		t.Log("Gateway API CRDs were new: restarting istiod-lite so that it watches Gateways")
		if out, err := c.Kubectl(ctx, "", "-n", "istio-system", "rollout", "restart", "deployment/istiod-lite"); err != nil {
			t.Fatalf("restart istiod-lite: %v\n%s", err, out)
		}
	}
	c.WaitForDeployment(t, "istio-system", "istiod-lite", 3*time.Minute)
	if out, err := c.Kubectl(ctx, "", "-n", "istio-system", "rollout", "status", "daemonset/ztunnel", "--timeout=180s"); err != nil {
		t.Fatalf("ztunnel rollout: %v\n%s", err, out)
	}
}

// waitNamespacesGone waits for the suite's namespaces of an earlier run
// that are still terminating (applying into them would fail).
func waitNamespacesGone(t *testing.T, c *devkube.Cluster) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := c.Client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, nil
		}
		for _, ns := range list.Items {
			if strings.HasPrefix(ns.Name, "gateway-conformance-") && ns.Status.Phase == corev1.NamespaceTerminating {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		t.Fatalf("namespaces gateway-conformance-* of an earlier run still terminating: %v", err)
	}
}

// deployWaypoint creates the namespace waypoint of gateway-conformance-mesh
// (as Istio's ambient conformance run does), waits until it is Programmed,
// and enrolls the namespace (istio.io/use-waypoint).
func deployWaypoint(t *testing.T, c *devkube.Cluster, cl client.Client) {
	t.Helper()
	ctx := context.Background()
	gw := &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: waypointName, Namespace: meshNamespace},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: "istio-waypoint",
			Listeners: []gatewayv1.Listener{{
				Name:     "mesh",
				Port:     15008,
				Protocol: "HBONE",
			}},
		},
	}
	if err := cl.Create(ctx, gw); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create waypoint Gateway: %v", err)
	}
	last := ""
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, waypointProgrammedLimit, true, func(ctx context.Context) (bool, error) {
		var cur gatewayv1.Gateway
		if err := cl.Get(ctx, types.NamespacedName{Namespace: meshNamespace, Name: waypointName}, &cur); err != nil {
			return false, nil
		}
		state := "no status yet"
		for _, cond := range cur.Status.Conditions {
			if cond.Type == string(gatewayv1.GatewayConditionProgrammed) {
				state = fmt.Sprintf("Programmed=%s %s: %s", cond.Status, cond.Reason, cond.Message)
				if cond.Status == metav1.ConditionTrue && cond.ObservedGeneration == cur.Generation {
					return true, nil
				}
			}
		}
		if state != last {
			t.Logf("waypoint %s/%s: %s", meshNamespace, waypointName, state)
			last = state
		}
		return false, nil
	})
	if err != nil {
		out, _ := c.Kubectl(ctx, "", "-n", meshNamespace, "get", "gateway,deploy,pods,svc", "-o", "wide")
		t.Fatalf("waypoint %s/%s not Programmed within %s (last: %s); is istiod-lite's waypoint controller running and watching Gateways?\n%s",
			meshNamespace, waypointName, waypointProgrammedLimit, last, out)
	}
	if out, err := c.Kubectl(ctx, "", "label", "--overwrite", "namespace", meshNamespace, "istio.io/use-waypoint="+waypointName); err != nil {
		t.Fatalf("label namespace: %v\n%s", err, out)
	}
}

// writeReport writes the ConformanceReport to
// reports/<Gateway API version>/ambit-mesh.yaml and returns the path.
func writeReport(t *testing.T, report *confv1.ConformanceReport) string {
	t.Helper()
	raw, err := yaml.Marshal(report)
	if err != nil {
		t.Fatal(err)
	}
	v := report.GatewayAPIVersion
	if v == "" || strings.ContainsAny(v, `/\`) {
		v = "UNDEFINED"
	}
	dir := filepath.Join(repoDir(), "conformance", "reports", v)
	if p := os.Getenv("CONFORMANCE_REPORT_DIR"); p != "" {
		dir = p
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, reportName)
	if err := os.WriteFile(path, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// summarize prints the tests that ran (pass/fail, each with its time), the
// counts of the profiles, and where the report is.
func summarize(t *testing.T, results map[string]string, timing map[string]time.Duration, report *confv1.ConformanceReport, path string, total, run time.Duration) {
	var names []string
	notRun := 0
	for n, r := range results {
		if r == "NOTRUN" {
			notRun++
			continue
		}
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	fmt.Fprintf(&b, "\n==== Gateway API conformance (ambient mode): %s ====\n", report.GatewayAPIVersion)
	passed, failed, skipped := 0, 0, 0
	for _, n := range names {
		fmt.Fprintf(&b, "  %-4s  %-45s %6.1fs\n", results[n], n, timing[n].Seconds())
		switch results[n] {
		case "PASS":
			passed++
		case "FAIL":
			failed++
		default:
			skipped++
		}
	}
	fmt.Fprintf(&b, "tests run: %d (%d passed, %d failed, %d skipped); %d not run (not selected, or they need features outside the mesh profiles, e.g. Gateway)\n",
		len(names), passed, failed, skipped, notRun)
	for _, p := range report.ProfileReports {
		fmt.Fprintf(&b, "profile %s: core %s (%d passed, %d failed, %d skipped)", p.Name, p.Core.Result, p.Core.Passed, p.Core.Failed, p.Core.Skipped)
		if p.Extended != nil {
			fmt.Fprintf(&b, ", extended %s (%d passed, %d failed, %d skipped)", p.Extended.Result, p.Extended.Passed, p.Extended.Failed, p.Extended.Skipped)
		}
		b.WriteString("\n")
	}
	fmt.Fprintf(&b, "report: %s\nwall time: %s (tests %s)\n", path, total.Round(time.Second), run.Round(time.Second))
	fmt.Print(b.String())
	if failed > 0 || skipped > 0 {
		t.Errorf("%d conformance tests failed, %d skipped", failed, skipped)
	}
}
