package proxy

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strings"

	"github.com/ambit-mesh/ambit/waypoint/router"
	"github.com/ambit-mesh/ambit/waypoint/telemetry"
	"github.com/ambit-mesh/ambit/waypoint/upstream"
)

// upgradeType returns the lower-cased Upgrade of an HTTP/1.1 upgrade
// request ("websocket"), or "".
func upgradeType(r *http.Request) string {
	if r.ProtoMajor != 1 {
		return ""
	}
	for _, v := range r.Header.Values("Connection") {
		for _, tok := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(tok), "upgrade") {
				return strings.ToLower(strings.TrimSpace(r.Header.Get("Upgrade")))
			}
		}
	}
	return ""
}

// allowedUpgrade reports whether the chain's HCM allows the upgrade;
// Envoy answers 403 to upgrades it is not configured for.
func allowedUpgrade(upgrades []string, typ string) bool { return slices.Contains(upgrades, typ) }

// upgrade forwards an upgrade request (websocket) to one host and, on 101,
// splices the two connections. There is no retry and no route timeout
// once the upgrade is done: the connection is long-lived by nature.
func (p *Proxy) upgrade(w *responseWriter, r *http.Request, target netip.AddrPort, d *router.Decision, rec *telemetry.Request, cl *upstream.Cluster, h http.Header, u *url.URL, typ string) {
	host, err := cl.PickFor(target, nil)
	if err != nil {
		rec.Flags = "UH"
		localReply(w, http.StatusServiceUnavailable, "no healthy upstream")
		return
	}
	rec.UpstreamHost, rec.Destination = host.Address().String(), destination(host)
	rec.Attempts = 1
	end := host.Begin()
	defer end()
	h.Set("Connection", "Upgrade")
	h.Set("Upgrade", r.Header.Get("Upgrade"))
	out := &http.Request{
		Method: r.Method, URL: &url.URL{Scheme: "http", Host: host.Address().String(), Path: u.Path, RawPath: u.RawPath, RawQuery: u.RawQuery},
		Header: h, Host: d.Authority,
	}
	resp, err := host.Transport(false).RoundTrip(out.WithContext(r.Context()))
	if err != nil {
		host.Report(upstream.GatewayFailure)
		rec.Flags = "UF"
		localReply(w, http.StatusServiceUnavailable, "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
		return
	}
	host.Report(upstream.OutcomeOf(resp.StatusCode))
	if resp.StatusCode != http.StatusSwitchingProtocols {
		// Refused by the upstream: an ordinary response.
		p.copyResponse(w, r, r.Context(), resp, d, rec)
		_ = resp.Body.Close()
		return
	}
	up, ok := resp.Body.(io.ReadWriteCloser)
	if !ok || !strings.EqualFold(resp.Header.Get("Upgrade"), typ) {
		_ = resp.Body.Close()
		rec.Flags = "UC"
		localReply(w, http.StatusBadGateway, "upstream upgrade failed")
		return
	}
	defer up.Close()
	d.ApplyResponseHeaders(resp.Header)
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		rec.Flags = "DC"
		return
	}
	defer conn.Close()
	w.status = http.StatusSwitchingProtocols
	if err := writeHead(brw.Writer, resp); err != nil {
		return
	}
	done := make(chan int64, 1)
	go func() {
		n, _ := io.Copy(up, brw.Reader) // what the client buffered, then its connection
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- n
	}()
	n, _ := io.Copy(conn, up)
	w.n += n
	_ = conn.Close()
	rec.BytesReceived += <-done
}

// writeHead writes a 101 response's status line and headers.
func writeHead(bw *bufio.Writer, resp *http.Response) error {
	if _, err := fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", resp.StatusCode, http.StatusText(resp.StatusCode)); err != nil {
		return err
	}
	if err := resp.Header.Write(bw); err != nil {
		return err
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return err
	}
	return bw.Flush()
}
