package agent

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/ambit-mesh/ambit/ztunnel/certs"
)

func TestConfigDump(t *testing.T) {
	_, st := newRouter(t)
	served := &servedPods{certs: certs.NewManager(context.Background(), nil, 0, slog.New(slog.DiscardHandler)), byKey: map[string]*servedPod{
		"uid-1": {name: "apps/web-1", ips: []netip.Addr{netip.MustParseAddr("10.244.1.5")}},
	}}
	rec := httptest.NewRecorder()
	adminHandler("node-a", st, served).ServeHTTP(rec, httptest.NewRequest("GET", "/config_dump", nil))
	var d configDump
	if err := json.Unmarshal(rec.Body.Bytes(), &d); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if d.Node != "node-a" || len(d.Workloads) != 2 || len(d.Services) != 1 || len(d.Pods) != 1 || d.Pods[0].Pod != "apps/web-1" || d.Pods[0].Serving {
		t.Errorf("dump: %+v", d)
	}
	if !strings.Contains(rec.Body.String(), `"10.244.1.5"`) {
		t.Errorf("addresses not readable: %s", rec.Body)
	}
}
