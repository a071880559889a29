package main

// The go-router target: the waypoint's route engine (waypoint/router, the
// same compiled table) in front of Go's net/http/httputil.ReverseProxy on a
// plain HTTP/1.1 listener. No HBONE, no TLS, no telemetry: what Go's HTTP
// stack plus the engine cost, to read the waypoint's figure against (the
// waypoint's own proxy package offers no plain listener).

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"github.com/ambit-mesh/ambit/waypoint/router"
)

func runGoRouterRole(ctx context.Context, o roleOpts) error {
	tbl, err := router.Compile(envoyRoutes(httpRoute))
	if err != nil {
		return err
	}
	transport := &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}
	proxies := map[string]*httputil.ReverseProxy{}
	for cluster, port := range map[string]int{clusterA: o.portA, clusterB: o.portB} {
		u, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", port))
		proxies[cluster] = &httputil.ReverseProxy{
			Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(u); r.Out.Host = r.In.Host },
			Transport: transport,
			ModifyResponse: func(resp *http.Response) error {
				resp.Request.Context().Value(decisionKey{}).(*router.Decision).ApplyResponseHeaders(resp.Header)
				return nil
			},
		}
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d, ok := tbl.Route(&router.Request{Authority: r.Host, Method: r.Method, Path: r.URL.RequestURI(), Scheme: "http", Headers: r.Header})
		if !ok || d.Action != router.Forward || proxies[d.Cluster] == nil {
			http.Error(w, "no route", http.StatusNotFound)
			return
		}
		d.ApplyRequestHeaders(r.Header)
		proxies[d.Cluster].ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), decisionKey{}, d)))
	})
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second}
	go func() { <-ctx.Done(); _ = srv.Close() }()
	fmt.Println("ready")
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

type decisionKey struct{}
