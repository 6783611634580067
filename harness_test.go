package momento

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/caddyauth"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/fileserver"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/rewrite"
	_ "github.com/caddyserver/caddy/v2/modules/caddypki"
	_ "github.com/caddyserver/caddy/v2/modules/caddytls"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
	_ "github.com/caddyserver/caddy/v2/modules/logging"
	_ "github.com/caddyserver/caddy/v2/modules/metrics"
	"github.com/quic-go/quic-go/http3"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// This file holds the test harness: a real Caddy, loaded in process from a
// Caddyfile and listening on loopback, in front of real upstreams (the
// embedded backend, or servers that fail on purpose). It links the Caddy
// modules the tests' Caddyfiles use, not all of modules/standard: a smaller
// test binary links faster on every `go test ./...`. A Caddyfile that needs
// another fails to adapt, naming the directive.

// upstream is an HTTP server on loopback that counts what reaches it and
// remembers the last request's credentials.
type upstream struct {
	URL      string
	srv      *httptest.Server
	hits     atomic.Int64
	conns    atomic.Int64 // connections accepted
	lastAuth atomic.Value // string
	lastURI  atomic.Value // string
	lastUA   atomic.Value // string
}

func newUpstream(t *testing.T, h http.Handler) *upstream {
	t.Helper()
	u := &upstream{}
	u.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.hits.Add(1)
		u.lastAuth.Store(r.Header.Get("Authorization"))
		u.lastURI.Store(r.RequestURI)
		u.lastUA.Store(r.UserAgent())
		h.ServeHTTP(w, r)
	}))
	u.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			u.conns.Add(1)
		}
	}
	u.srv.Start()
	u.URL = u.srv.URL
	t.Cleanup(u.srv.Close)
	return u
}

// localUpstream runs the embedded backend as a region, requiring token.
func localUpstream(t *testing.T, token string) (*upstream, *momentolocal.Handler) {
	t.Helper()
	return localUpstreamWith(t, token, nil)
}

// localUpstreamWith runs the embedded backend with only the given caches
// (nil: every cache exists).
func localUpstreamWith(t *testing.T, token string, caches []string) (*upstream, *momentolocal.Handler) {
	t.Helper()
	return localUpstreamFrom(t, momentolocal.Handler{Token: token, Caches: caches})
}

// localUpstreamFrom is the embedded backend configured as cfg (its limits,
// say), on loopback until the test ends.
func localUpstreamFrom(t *testing.T, cfg momentolocal.Handler) (*upstream, *momentolocal.Handler) {
	t.Helper()
	lh, err := momentolocal.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	return newUpstream(t, lh.HTTPHandler()), lh
}

// refusedURL is an address where nothing listens.
func refusedURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// gateway is a running Caddy with a momento handler.
type gateway struct {
	t       *testing.T
	base    string
	logPath string
	client  *http.Client
	// roots trusts a TLS gateway's internal CA (nil for plain HTTP).
	roots *x509.CertPool
	// root is the folder the site's file_server serves (the next handler).
	root string
}

// startGateway loads a Caddyfile whose site holds the given directives
// (usually one momento block) and a file_server that stands for "the next
// handler". Caddy's own logs, at debug level, go to a file the test can read.
func startGateway(t *testing.T, directives string) *gateway {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("next handler"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := runCaddyfile(t, func(port int, logPath string) string {
		return globalOptions("off", logPath) + fmt.Sprintf(`:%d {
	bind 127.0.0.1
	log {
		output file %s
	}
%s
	file_server {
		root %s
	}
}
`, port, logPath, directives, dir)
	})
	g.root = dir
	return g
}

// globalOptions is the tests' global Caddyfile block: the admin endpoint
// ("off" or an address), no autosave, and Caddy's logs at debug level in a
// file the test reads.
func globalOptions(admin, logPath string) string {
	return fmt.Sprintf("{\n\tadmin %s\n\tpersist_config off\n\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}\n}\n", admin, logPath)
}

// runCaddyfile loads the Caddyfile that site returns for a free port and a
// log file path, and stops Caddy when the test ends.
func runCaddyfile(t *testing.T, site func(port int, logPath string) string) *gateway {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "caddy.log")
	port := freePort(t)
	cf := site(port, logPath)
	cfgJSON := adapt(t, cf)
	if err := caddy.Load(cfgJSON, true); err != nil {
		t.Fatalf("loading config: %v\n%s", err, cf)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	t.Cleanup(func() {
		// A failed test shows what Caddy logged, debug lines aside.
		if b, err := os.ReadFile(logPath); err == nil && t.Failed() {
			var lines []string
			for _, l := range strings.Split(string(b), "\n") {
				if !strings.Contains(l, `"level":"debug"`) && !strings.Contains(l, `"logger":"http.log.access`) {
					lines = append(lines, l)
				}
			}
			t.Logf("Caddy's log:\n%s", strings.Join(lines[max(0, len(lines)-40):], "\n"))
		}
	})
	return &gateway{
		t:       t,
		base:    fmt.Sprintf("http://127.0.0.1:%d", port),
		logPath: logPath,
		client:  &http.Client{Timeout: 30 * time.Second},
	}
}

// protocols are the HTTP versions a browser may use to reach Caddy.
var protocols = []string{"h1", "h2", "h3"}

// startGatewayTLS is startGateway on https:// with Caddy's own internal CA
// (never installed into the system trust store), serving HTTP/1.1, HTTP/2
// and HTTP/3 as Caddy does in production. g.client speaks proto ("h1",
// "h2" or "h3") and trusts only that CA; g.clientFor gives the others.
func startGatewayTLS(t *testing.T, proto, directives string) *gateway {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.html"), []byte("next handler"), 0o644); err != nil {
		t.Fatal(err)
	}
	storage := t.TempDir()
	g := runCaddyfile(t, func(port int, logPath string) string {
		return strings.Replace(globalOptions("off", logPath), "{\n", fmt.Sprintf(
			"{\n\tskip_install_trust\n\tstorage file_system %s\n\tauto_https disable_redirects\n", storage), 1) +
			fmt.Sprintf(`https://127.0.0.1:%d {
	bind 127.0.0.1
	tls internal
	log {
		output file %s
	}
%s
	file_server {
		root %s
	}
}
`, port, logPath, directives, dir)
	})
	g.base = strings.Replace(g.base, "http://", "https://", 1)
	g.root = dir
	root, err := os.ReadFile(filepath.Join(storage, "pki", "authorities", "local", "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	g.roots = x509.NewCertPool()
	if !g.roots.AppendCertsFromPEM(root) {
		t.Fatal("Caddy's internal root certificate is not PEM")
	}
	// Caddy obtains its certificate in the background after loading, and
	// offers no signal a test can wait on: wait until a handshake verifies.
	addr := strings.TrimPrefix(g.base, "https://")
	waitFor(t, func() bool {
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: g.roots})
		if err != nil {
			return false
		}
		conn.Close()
		return true
	})
	g.client = g.clientFor(proto)
	return g
}

// clientFor is a client of a TLS gateway that speaks only proto.
func (g *gateway) clientFor(proto string) *http.Client {
	g.t.Helper()
	tlsConf := &tls.Config{RootCAs: g.roots}
	var rt http.RoundTripper
	switch proto {
	case "h1":
		tr := &http.Transport{TLSClientConfig: tlsConf}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP1(true)
		rt = tr
	case "h2":
		tr := &http.Transport{TLSClientConfig: tlsConf}
		tr.Protocols = new(http.Protocols)
		tr.Protocols.SetHTTP2(true)
		rt = tr
	case "h3":
		tr := &http3.Transport{TLSClientConfig: tlsConf}
		g.t.Cleanup(func() { _ = tr.Close() })
		rt = tr
	default:
		g.t.Fatalf("unknown protocol %q", proto)
	}
	return &http.Client{Transport: rt, Timeout: 30 * time.Second}
}

// loadError loads a Caddyfile and returns the error Caddy gives.
func loadError(t *testing.T, directives string) error {
	t.Helper()
	cf := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tbind 127.0.0.1\n%s\n}\n", freePort(t), directives)
	cfgJSON, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return err
	}
	err = caddy.Load(cfgJSON, true)
	if err == nil {
		_ = caddy.Stop()
	}
	return err
}

func adapt(t *testing.T, cf string) []byte {
	t.Helper()
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		t.Fatalf("adapting Caddyfile: %v\n%s", err, cf)
	}
	for _, w := range warnings {
		t.Logf("adapt warning: %s", w.String())
	}
	return cfgJSON
}

// response is what a client saw.
type response struct {
	status int
	header http.Header
	body   string
}

func (g *gateway) do(method, target string, body io.Reader, hdr ...string) response {
	g.t.Helper()
	req, err := http.NewRequest(method, g.base+target, body)
	if err != nil {
		g.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := g.client.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func (g *gateway) get(target string) response { return g.do(http.MethodGet, target, nil) }
func (g *gateway) put(target, value string) response {
	return g.do(http.MethodPut, target, strings.NewReader(value))
}

// logs returns what Caddy logged so far.
func (g *gateway) logs() string {
	b, err := os.ReadFile(g.logPath)
	if err != nil && !os.IsNotExist(err) {
		g.t.Fatal(err)
	}
	return string(b)
}

func expect(t *testing.T, r response, status int, bodyContains string) {
	t.Helper()
	if r.status != status || !strings.Contains(r.body, bodyContains) {
		t.Fatalf("got %d %q; want %d with body containing %q", r.status, r.body, status, bodyContains)
	}
}

func adaptCaddyfile(cf string) ([]byte, []caddyconfig.Warning, error) {
	return caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
}

// basicAuthBlock puts two users in front of the directives that follow.
// Preflights carry no credentials, so OPTIONS is let through.
const basicAuthBlock = `	@signedIn not method OPTIONS
	basic_auth @signedIn {
		alice $2a$10$olWCYWaPXYAdTwT0XPZXXesueUXxI8MIfpcDQ7k7WswrCoGEJzT3.
		bob $2a$10$fme7tkfKlIe3dTBQujwGGuHvtM0DrM6zQspZX7CrPw6HPyLeATuD2
	}
`

// basicAuth is the Authorization header of a basicAuthBlock user.
func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+user+"-password"))
}

// slowClient sends a GET for path on a connection of its own, with a receive
// buffer of rcvbuf bytes, and reads nothing: the test reads (or not) from
// the connection it returns, which is closed when the test ends.
func slowClient(t *testing.T, g *gateway, path string, rcvbuf int) net.Conn {
	t.Helper()
	return slowClientFrom(t, g, path, rcvbuf, nil)
}

// slowClientFrom is slowClient from a source address of its own (on
// loopback, any of 127.0.0.0/8); nil: the system's choice.
func slowClientFrom(t *testing.T, g *gateway, path string, rcvbuf int, src net.IP) net.Conn {
	t.Helper()
	d := net.Dialer{}
	if src != nil {
		d.LocalAddr = &net.TCPAddr{IP: src}
	}
	conn, err := d.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	_ = conn.(*net.TCPConn).SetReadBuffer(rcvbuf)
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
	return conn
}
