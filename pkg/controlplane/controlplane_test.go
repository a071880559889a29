package controlplane

import (
	"context"
	"os"
	"path/filepath"
	"testing"
)

// The token is re-read for every RPC (the kubelet rotates it), trimmed.
func TestTokenCredsRereadsTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	creds := tokenCreds(path)
	if _, err := creds.GetRequestMetadata(context.Background()); err == nil {
		t.Fatal("a missing token file gave credentials")
	}
	for _, tok := range []string{"first", "second"} {
		if err := os.WriteFile(path, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		md, err := creds.GetRequestMetadata(context.Background())
		if err != nil || md["authorization"] != "Bearer "+tok {
			t.Fatalf("metadata %v, %v; want Bearer %s", md, err, tok)
		}
	}
	if !creds.RequireTransportSecurity() {
		t.Error("the token may be sent without TLS")
	}
}
