package certmanager_test

// The tests run against a real control plane (pkg/kubetest) and cert-manager's
// real controllers (tools/certmanager, built by `make certmanager-bin`), with
// cert-manager's CRDs from its module (deploy/crds, plain YAML, installed
// as they are).
//
// Two cert-manager processes share the apiserver:
//   - the signers: issuers, clusterissuers, certificaterequests-issuer-ca and
//     certificaterequests-issuer-selfsigned, for all namespaces;
//   - the approver: certificaterequests-approver, limited (--namespace) to
//     approvedNS, as a cert-manager installed for one namespace runs it.
// Requests in policyNS are approved or denied by nobody but the test itself,
// standing in for an external approver such as approver-policy.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/ambit-mesh/ambit/istiod-lite/ca/certmanager"
	"github.com/ambit-mesh/ambit/pkg/kubetest"
)

// BinEnv names the controller binary; CRDs are in crds/ beside it.
const (
	BinEnv     = "AMBIT_CERTMANAGER_BIN"
	MakeTarget = "make certmanager-bin"
	binName    = "cert-manager-controller"
	cmModule   = "github.com/cert-manager/cert-manager"
)

// Fixed namespaces (see the package comment above).
const (
	approvedNS = "cm-approved"
	policyNS   = "cm-policy"
	clusterNS  = "cm-cluster" // --cluster-resource-namespace
)

// suite is the package's environment, set up by TestMain.
var suite struct {
	env    *kubetest.Env
	cm     cmclient.Interface
	logs   []string // cert-manager log files
	procs  []proc
	module string // cert-manager version tools/certmanager pins
}

func TestMain(m *testing.M) {
	code := func() int {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		start := time.Now()
		if err := setUp(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "FAIL: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "certmanager: apiserver, CRDs and cert-manager up in %s\n", time.Since(start).Round(time.Millisecond))
		code := m.Run()
		if code != 0 {
			for _, l := range suite.logs {
				fmt.Fprintf(os.Stderr, "--- %s (tail)\n%s\n", filepath.Base(l), tail(l, 3000))
			}
		}
		return code
	}()
	tearDown()
	os.Exit(code)
}

// binPath finds the controller: $AMBIT_CERTMANAGER_BIN, else where `make
// certmanager-bin` puts it for the cert-manager version this test is built
// with.
func binPath() string {
	if p := os.Getenv(BinEnv); p != "" {
		return p
	}
	v := suite.module
	p := filepath.Join("/var/cache/ambit-certmanager", v, binName)
	if _, err := os.Stat(p); err == nil {
		return p
	}
	local := filepath.Join(repoRoot(), ".cache", "certmanager", v, binName)
	if _, err := os.Stat(local); err == nil {
		return local
	}
	return p
}

// repoRoot is the repository's top directory, from this file's path.
func repoRoot() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "."
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..", ".."))
}

var requireRE = regexp.MustCompile(`(?m)^\s*(?:require\s+)?github\.com/cert-manager/cert-manager (v\S+)`)

// requiredVersion is the cert-manager version the go.mod in dir requires.
func requiredVersion(dir string) (string, error) {
	data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
	if err != nil {
		return "", err
	}
	m := requireRE.FindSubmatch(data)
	if m == nil {
		return "", fmt.Errorf("%s/go.mod does not require %s", dir, cmModule)
	}
	return string(m[1]), nil
}

func setUp(ctx context.Context) error {
	v, err := requiredVersion(filepath.Join(repoRoot(), "tools", "certmanager"))
	if err != nil {
		return fmt.Errorf("cert-manager version: %w", err)
	}
	suite.module = v
	bin := binPath()
	crdDir := filepath.Join(filepath.Dir(bin), "crds")
	if st, err := os.Stat(bin); err != nil || st.Mode()&0o111 == 0 {
		return fmt.Errorf("cert-manager controller %s missing: run `%s` (builds cert-manager %s's controllers and copies its CRDs; ~3 min cold) or set %s", bin, MakeTarget, suite.module, BinEnv)
	}
	crds, err := filepath.Glob(filepath.Join(crdDir, "*.yaml"))
	if err != nil || len(crds) == 0 {
		return fmt.Errorf("cert-manager CRDs missing from %s: run `%s`", crdDir, MakeTarget)
	}
	env, err := kubetest.Start(ctx, kubetest.Options{})
	if err != nil {
		return err
	}
	suite.env = env
	if suite.cm, err = cmclient.NewForConfig(env.RESTConfig()); err != nil {
		return fmt.Errorf("cert-manager client: %w", err)
	}
	if err := installCRDs(ctx, env, crds); err != nil {
		return err
	}
	for _, ns := range []string{approvedNS, policyNS, clusterNS} {
		if _, err := env.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("namespace %s: %w", ns, err)
		}
	}
	if err := startCertManager(bin, "signers",
		"--controllers=issuers,clusterissuers,certificaterequests-issuer-ca,certificaterequests-issuer-selfsigned"); err != nil {
		return err
	}
	return startCertManager(bin, "approver", "--controllers=certificaterequests-approver", "--namespace="+approvedNS)
}

// installCRDs creates the CRDs and waits until the apiserver serves them.
func installCRDs(ctx context.Context, env *kubetest.Env, files []string) error {
	dyn, err := dynamic.NewForConfig(env.RESTConfig())
	if err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	var names []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("CRD: %w", err)
		}
		for _, doc := range bytes.Split(data, []byte("\n---")) {
			doc = bytes.TrimPrefix(bytes.TrimSpace(doc), []byte("---"))
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			obj := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
				return fmt.Errorf("CRD %s: %w", filepath.Base(f), err)
			}
			if obj.GetKind() != "CustomResourceDefinition" {
				return fmt.Errorf("CRD %s: unexpected kind %q", filepath.Base(f), obj.GetKind())
			}
			if _, err := dyn.Resource(crdGVR).Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("create CRD %s: %w", obj.GetName(), err)
			}
			names = append(names, obj.GetName())
		}
	}
	for _, n := range names {
		for {
			obj, err := dyn.Resource(crdGVR).Get(ctx, n, metav1.GetOptions{})
			if err == nil && crdEstablished(obj) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("CRD %s not established: %w (%v)", n, ctx.Err(), err)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func crdEstablished(obj *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(obj.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == "Established" && m["status"] == "True" {
			return true
		}
	}
	return false
}

func startCertManager(bin, name string, args ...string) error {
	logPath := filepath.Join(suite.env.Dir, "cert-manager-"+name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("cert-manager %s log: %w", name, err)
	}
	args = append([]string{
		"--kubeconfig=" + suite.env.Kubeconfig,
		"--leader-elect=false",
		"--cluster-resource-namespace=" + clusterNS,
		"--v=2",
	}, args...)
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = procAttr()
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("start cert-manager %s: %w", name, err)
	}
	p := proc{cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); _ = logFile.Close(); close(p.done) }()
	suite.procs = append(suite.procs, p)
	suite.logs = append(suite.logs, logPath)
	return nil
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func tearDown() {
	for _, p := range suite.procs {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, p := range suite.procs {
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	if suite.env != nil {
		if err := suite.env.Stop(); err != nil {
			fmt.Fprintf(os.Stderr, "kubetest: %v\n", err)
		}
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return string(data)
}

// testCA is a CA certificate and key in the PEM a cert-manager CA issuer
// reads from its Secret.
type testCA struct {
	cert            *x509.Certificate
	certPEM, keyPEM []byte
}

func newTestCA(t *testing.T, cn string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(24 * time.Hour * 365),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{
		cert:    cert,
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
	}
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// caIssuer creates a cert-manager CA Issuer (or ClusterIssuer when ns is
// "") backed by a fresh CA in a Secret, and waits until cert-manager has
// marked it Ready.
func caIssuer(t *testing.T, ns, name string) *testCA {
	t.Helper()
	ctx := ctxFor(t, 30*time.Second)
	authority := newTestCA(t, "cert-manager test CA "+name)
	secretNS := ns
	if ns == "" {
		secretNS = clusterNS
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: secretNS, Name: name + "-ca"},
		Type:       corev1.SecretTypeTLS,
		Data:       map[string][]byte{corev1.TLSCertKey: authority.certPEM, corev1.TLSPrivateKeyKey: authority.keyPEM},
	}
	if _, err := suite.env.Client.CoreV1().Secrets(secretNS).Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatalf("CA secret: %v", err)
	}
	spec := cmapi.IssuerSpec{IssuerConfig: cmapi.IssuerConfig{CA: &cmapi.CAIssuer{SecretName: secret.Name}}}
	meta := metav1.ObjectMeta{Namespace: ns, Name: name}
	if ns == "" {
		if _, err := suite.cm.CertmanagerV1().ClusterIssuers().Create(ctx, &cmapi.ClusterIssuer{ObjectMeta: meta, Spec: spec}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("ClusterIssuer: %v", err)
		}
		t.Cleanup(func() {
			_ = suite.cm.CertmanagerV1().ClusterIssuers().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	} else if _, err := suite.cm.CertmanagerV1().Issuers(ns).Create(ctx, &cmapi.Issuer{ObjectMeta: meta, Spec: spec}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("Issuer: %v", err)
	}
	waitIssuerReady(t, ctx, ns, name)
	return authority
}

func waitIssuerReady(t *testing.T, ctx context.Context, ns, name string) {
	t.Helper()
	for {
		var conds []cmapi.IssuerCondition
		var err error
		if ns == "" {
			var iss *cmapi.ClusterIssuer
			if iss, err = suite.cm.CertmanagerV1().ClusterIssuers().Get(ctx, name, metav1.GetOptions{}); err == nil {
				conds = iss.Status.Conditions
			}
		} else {
			var iss *cmapi.Issuer
			if iss, err = suite.cm.CertmanagerV1().Issuers(ns).Get(ctx, name, metav1.GetOptions{}); err == nil {
				conds = iss.Status.Conditions
			}
		}
		for _, c := range conds {
			if c.Type == cmapi.IssuerConditionReady && c.Status == cmmeta.ConditionTrue {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("issuer %s/%s not Ready: %v (conditions %+v, error %v)", ns, name, ctx.Err(), conds, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// requestsLeft lists the CertificateRequests the signer created in ns.
func requestsLeft(t *testing.T, ns string) []string {
	t.Helper()
	list, err := suite.cm.CertmanagerV1().CertificateRequests(ns).List(ctxFor(t, 10*time.Second), metav1.ListOptions{
		LabelSelector: certmanager.ManagedByLabel + "=" + certmanager.ManagedByValue,
	})
	if err != nil {
		t.Fatalf("list CertificateRequests: %v", err)
	}
	var names []string
	for _, cr := range list.Items {
		if cr.DeletionTimestamp == nil {
			names = append(names, cr.Name)
		}
	}
	return names
}

func expectNoRequestsLeft(t *testing.T, ns string) {
	t.Helper()
	if left := requestsLeft(t, ns); len(left) > 0 {
		t.Errorf("CertificateRequests left behind in %s: %s", ns, strings.Join(left, ", "))
	}
}
