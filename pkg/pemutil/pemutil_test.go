package pemutil

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

func selfSigned(t *testing.T, cn string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestCertificatesRoundTrip(t *testing.T) {
	t.Parallel()
	a, b := selfSigned(t, "a"), selfSigned(t, "b")
	data := EncodeCertificates([]*x509.Certificate{a, b})
	if n := bytes.Count(data, []byte("-----BEGIN CERTIFICATE-----")); n != 2 {
		t.Fatalf("%d PEM blocks, want 2", n)
	}
	got, err := ParseCertificates(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[0].Equal(a) || !got[1].Equal(b) {
		t.Fatal("round trip lost certificates or their order")
	}
	// Surrounding and interleaved whitespace is fine.
	spaced := append(append([]byte("\n\n  "), bytes.ReplaceAll(data, []byte("-----\n-----"), []byte("-----\n\n\r\n-----"))...), "\n\t "...)
	if got, err := ParseCertificates(spaced); err != nil || len(got) != 2 {
		t.Fatalf("whitespace: %d certs, %v", len(got), err)
	}
	if got, err := ParseCertificates(nil); err != nil || len(got) != 0 {
		t.Fatalf("empty input: %v, %v", got, err)
	}
	if len(EncodeCertificates(nil)) != 0 {
		t.Fatal("encoding no certificates produced output")
	}
}

func TestParseCertificatesRejects(t *testing.T) {
	t.Parallel()
	cert := EncodeCertificates([]*x509.Certificate{selfSigned(t, "a")})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})
	for name, tt := range map[string]struct {
		data    []byte
		wantErr string
	}{
		"key after cert":  {append(bytes.Clone(cert), keyPEM...), `"PRIVATE KEY"`},
		"trailing text":   {append(bytes.Clone(cert), "garbage"...), "trailing data"},
		"only text":       {[]byte("not pem"), "trailing data"},
		"bad DER":         {pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")}), "certificate 0"},
		"bad second cert": {append(bytes.Clone(cert), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("nope")})...), "certificate 1"},
		"truncated PEM":   {cert[:len(cert)-10], "trailing data"},
	} {
		if got, err := ParseCertificates(tt.data); err == nil || got != nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: ParseCertificates = %d certs, %v; want error mentioning %q", name, len(got), err, tt.wantErr)
		}
	}
}

func TestParsePrivateKey(t *testing.T) {
	t.Parallel()
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, ed, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}
	sec1, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	encoded, err := EncodeECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(encoded, []byte("-----BEGIN PRIVATE KEY-----")) {
		t.Fatalf("EncodeECPrivateKey is not PKCS#8: %q", encoded[:30])
	}
	for name, tt := range map[string]struct {
		data []byte
		pub  crypto.PublicKey
	}{
		"EncodeECPrivateKey": {encoded, ec.Public()},
		"PKCS#8 EC":          {pkcs8(ec), ec.Public()},
		"SEC1 EC":            {pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), ec.Public()},
		"PKCS#1 RSA":         {pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}), rsaKey.Public()},
		"PKCS#8 RSA":         {pkcs8(rsaKey), rsaKey.Public()},
		"PKCS#8 Ed25519":     {pkcs8(ed), ed.Public()},
	} {
		k, err := ParsePrivateKey(tt.data)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if !k.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(tt.pub) {
			t.Errorf("%s: parsed a different key", name)
		}
	}

	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, tt := range map[string]struct {
		data    []byte
		wantErr string
	}{
		"empty":            {nil, "no PEM block"},
		"not PEM":          {[]byte("key"), "no PEM block"},
		"certificate":      {EncodeCertificates([]*x509.Certificate{selfSigned(t, "a")}), "unexpected PEM block"},
		"X25519 (no sign)": {pkcs8(x), "cannot sign"},
		"bad PKCS#8":       {pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte("x")}), "PKCS#8"},
		"bad SEC1":         {pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: []byte("x")}), "SEC1"},
		"bad PKCS#1":       {pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("x")}), "PKCS#1"},
	} {
		if k, err := ParsePrivateKey(tt.data); err == nil || k != nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: ParsePrivateKey = %T, %v; want error mentioning %q", name, k, err, tt.wantErr)
		}
	}
}
