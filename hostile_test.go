package momento

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// rawRequest writes bytes to the gateway on a fresh connection and returns
// the status line and body of the answer.
func rawRequest(t *testing.T, g *gateway, raw string) (status int, body string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	// The gateway may answer, and close, before it has read all of an
	// oversized request: the answer is what counts, so a failed write is
	// only an error if no answer can be read either.
	_, werr := io.WriteString(conn, raw)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v (writing the request: %v)", err, werr)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHostileClients(t *testing.T) {
	up, lh := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 300ms\n\t\tmax_key_size 4KiB\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")

	cases := []struct {
		name, raw string
		status    int
		msg       string
	}{
		{"CR/LF in the request line", "GET /cache/c?key=a\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""},
		{"CR in a header value", "GET /cache/c?key=a HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", 400, ""},
		{"NUL in the cache name", "GET /cache/a%00b?key=a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "control characters"},
		{"encoded slash in the cache name", "GET /cache/a%2F..%2Fb?key=a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "must not contain"},
		{"overlong key", "GET /cache/c?key=" + strings.Repeat("k", 5000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 400, "key of 5000 bytes exceeds max_key_size (4096 bytes)"},
		{"overlong cache name", "GET /cache/" + strings.Repeat("c", 300) + "?key=a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "longer than 255 bytes"},
		{"overlong query string", "GET /cache/c?key=a&pad=" + strings.Repeat("p", 2<<20) + " HTTP/1.1\r\nHost: x\r\n\r\n", 431, ""},
		{"huge headers", "GET /cache/c?key=a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("h", 2<<20) + "\r\n\r\n", 431, ""},
		{"two Content-Lengths", "PUT /cache/c?key=a&ttl_seconds=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawRequest(t, g, tc.raw)
			if status != tc.status || !strings.Contains(body, tc.msg) {
				t.Fatalf("got %d %q; want %d %q", status, body, tc.status, tc.msg)
			}
		})
	}
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("hostile requests reached the region %d times", n)
	}

	// Encoded CR/LF in a key is just key bytes: it travels escaped and
	// never becomes a header upstream.
	expect(t, g.put("/cache/c?key=a%0D%0AX-Injected:%201&ttl_seconds=60", "v"), 204, "")
	if uri := up.lastURI.Load().(string); strings.ContainsAny(uri, "\r\n") || !strings.Contains(uri, "key=a%0D%0AX-Injected%3A+1") {
		t.Fatalf("upstream request URI %q", uri)
	}
	expect(t, g.get("/cache/c?key=a%0D%0AX-Injected:%201"), 200, "v")

	// Slowloris: a PUT that sends part of its body and stalls gets 408
	// after the timeout, stores nothing, and does not count against the
	// region (failures 1 would have opened the breaker).
	before := lh.Len()
	status, body := rawRequest(t, g, "PUT /cache/c?key=slow&ttl_seconds=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	if status != 408 || !strings.Contains(body, "nothing was stored") {
		t.Fatalf("slow body: %d %q", status, body)
	}
	if lh.Len() != before {
		t.Fatal("a stalled upload was stored")
	}
	expect(t, g.get("/cache/c?key=slow"), 404, "Key Not Found")
}

// Nothing a client sends changes a region's breaker: malformed keys are
// refused at the edge and never reach the region, even through an
// anonymous read-only handler. (A CR or LF in key_base64 used to pass
// validation, fail in net/http, and count as region failures: five such
// GETs opened the breaker for everyone.)
func TestHostileInputCannotOpenTheBreaker(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\thandle_path /public/* {\n\t\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\t\tallow {\n\t\t\t\tops get\n\t\t\t}\n\t\t\tbreaker {\n\t\t\t\tfailures 1\n\t\t\t}\n\t\t}\n\t}\n"+
		"\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")
	for _, key := range []string{"Y%0AQ", "Y%0DQ", "Y%0D%0AQ", "%0AYQ", "YQ%0A", "YQ%0D%0A", "Y%00Q", "Y%20Q", "YQ==%0A"} {
		for _, req := range []struct{ method, target string }{
			{"GET", "/public/cache/c?key_base64=" + key},
			{"GET", "/cache/c?key_base64=" + key},
			{"PUT", "/cache/c?ttl_seconds=60&key_base64=" + key},
			{"DELETE", "/cache/c?key_base64=" + key},
		} {
			expect(t, g.do(req.method, req.target, strings.NewReader("v")), 400, "key_base64 is not URL-safe base64")
		}
	}
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("hostile keys reached the region %d times", n)
	}
	b := pooledBreaker(t, "r", up.URL)
	if c := b.counts(); b.state() != gobreaker.StateClosed || c.Requests != 0 {
		t.Fatalf("breaker %v with counts %+v after hostile input", b.state(), c)
	}
	expect(t, g.get("/public/cache/c?key_base64=YQ"), 404, "Key Not Found")
}

// A client that reads its answer slowly is its own problem: the region
// answered at full speed, so its breaker stays closed. (One deadline used
// to cover the whole exchange, streaming to the client included: six slow
// readers opened the breaker.)
func TestSlowReaderCannotOpenTheBreaker(t *testing.T) {
	// A region that answers a 16 MiB value at once: more than the kernel
	// buffers between the gateway and a client that does not read.
	value := bytes.Repeat([]byte("v"), 16<<20)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(value)
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 100ms\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")

	{ // one is enough: with failures 1, a failure would open the breaker
		conn := slowClient(t, g, "/cache/c?key=big", 64<<10)
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		// The client stops reading for twice the timeout: the gateway's
		// writes to it block meanwhile. Not reading is the point.
		time.Sleep(200 * time.Millisecond)
		got, err := io.Copy(io.Discard, resp.Body)
		conn.Close()
		if err != nil || got != int64(len(value)) {
			t.Fatalf("the slow reader got %d of %d bytes (%v)", got, len(value), err)
		}
	}
	b := pooledBreaker(t, "r", up.URL)
	if c := b.counts(); b.state() != gobreaker.StateClosed || c.TotalFailures != 0 {
		t.Fatalf("breaker %v with counts %+v after slow readers", b.state(), c)
	}
	if strings.Contains(g.logs(), "upstream answer cut off") {
		t.Fatal("a slow reader was logged as the region cutting off its answer")
	}
}

// A region may end an answer it could not send in time (a send deadline
// of its own). Without coalescing the gateway reads the region only as
// fast as the client reads, so a slow reader makes that happen: it is the
// client's doing, and the breaker stays closed.
func TestSlowReaderOfARegionWithASendDeadline(t *testing.T) {
	value := bytes.Repeat([]byte("v"), 16<<20)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		w.Header().Set("Content-Type", "application/octet-stream")
		_, _ = w.Write(value)
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tcoalesce off\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")
	conn := slowClient(t, g, "/cache/c?key=big", 64<<10)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	// About 32 MB/s: the region's 100 ms pass long before 16 MiB.
	buf := make([]byte, 32<<10)
	got := 0
	for {
		n, err := resp.Body.Read(buf)
		got += n
		if err != nil {
			break
		}
		time.Sleep(time.Millisecond) // the client's pace, not a wait
	}
	conn.Close()
	if got >= len(value) {
		t.Fatalf("the region's send deadline did not cut the answer (%d bytes)", got)
	}
	b := pooledBreaker(t, "r", up.URL)
	if c := b.counts(); b.state() != gobreaker.StateClosed || c.TotalFailures != 0 {
		t.Fatalf("breaker %v with counts %+v after slow readers", b.state(), c)
	}
}

// A client that reads its answer slowly cannot hold a half-open breaker's
// probe either: the region's answer decides the probe when its headers
// arrive, not when the client has taken the whole value. (A GET proxied
// alone and read at 4 KB a second held it for 30 s, until the stall limit,
// in a hostile review.)
func TestASlowReaderCannotHoldTheProbe(t *testing.T) {
	sw, _, up := switchedRegion(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 10s\n\t\tcoalesce off\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t\topen_for 100ms\n\t\t}\n\t}")
	b := pooledBreaker(t, "r", up.URL)
	value := bytes.Repeat([]byte("v"), 5<<20-100) // more than the sockets between take
	expect(t, g.do(http.MethodPut, "/cache/c?key=big&ttl_seconds=600", bytes.NewReader(value)), http.StatusNoContent, "")
	sw.set("500", nil)
	expect(t, g.get("/cache/c?key=k"), http.StatusInternalServerError, "")
	sw.set("", nil) // the region recovers
	waitFor(t, func() bool { return b.state() == gobreaker.StateHalfOpen })

	// The probe: a GET of the large value by a client that does not read.
	slowClient(t, g, "/cache/c?key=big", 4<<10)
	waitFor(t, func() bool { return b.state() == gobreaker.StateClosed })
	expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
}

// An upload refused by an open breaker is answered at once, its body
// unread, and its HTTP/1 connection closed (net/http would read up to 256
// KiB of the body before answering: a client that sends only after "100
// Continue", or slowly, waited).
func TestAnOpenBreakerAnswersAnUploadAtOnce(t *testing.T) {
	refused := refusedURL(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", refused, "t")+"\t\tbreaker {\n\t\t\tfailures 1\n\t\t\topen_for 1m\n\t\t}\n\t}")
	expect(t, g.get("/cache/c?key=k"), http.StatusBadGateway, "")
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second)) // the test's own bound
	fmt.Fprint(conn, "PUT /cache/c?key=k&ttl_seconds=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nfirst bytes")
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("no answer before the body: %v", err)
	}
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !resp.Close {
		t.Fatalf("got %d (Retry-After %q, close %v)", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close)
	}
}

// While a region's breaker is half-open it takes one probe; an upload
// that trickles in cannot be that probe and hold it at its own pace (one
// did, for as long as it liked, in a hostile review: a recovered region
// stayed refused for 54 s). It is read whole first, without a slot; a
// GET probes meanwhile and closes the breaker, and the trickle is told to
// retry.
func TestATricklingUploadCannotHoldTheProbe(t *testing.T) {
	sw, _, up := switchedRegion(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 10s\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t\topen_for 50ms\n\t\t\tprobe_upload_wait 400ms\n\t\t}\n\t}")
	b := pooledBreaker(t, "r", up.URL)
	failThenRecover := func() {
		sw.set("500", nil)
		expect(t, g.get("/cache/c?key=k"), http.StatusInternalServerError, "")
		sw.set("", nil) // the region recovers
		waitFor(t, func() bool { return b.state() == gobreaker.StateHalfOpen })
	}
	failThenRecover()

	// Uploads whose bodies the gateway has begun to read ("100 Continue"),
	// of which one byte arrives: three of 5 MB, as much as the gateway
	// reads whole at once (16 MiB); a fourth is refused at once, unread.
	upload := func() (net.Conn, *bufio.Reader, string) {
		conn, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		br := bufio.NewReader(conn)
		fmt.Fprint(conn, "PUT /cache/c?key=slow&ttl_seconds=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\nExpect: 100-continue\r\n\r\n")
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		return conn, br, line
	}
	var trickles []*bufio.Reader
	for range 3 {
		conn, br, line := upload()
		if !strings.HasPrefix(line, "HTTP/1.1 100") {
			t.Fatalf("no 100 Continue: %q", line)
		}
		_, _ = br.ReadString('\n') // the blank line after it
		fmt.Fprint(conn, "x")
		trickles = append(trickles, br)
	}
	_, br, line := upload()
	if resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(strings.NewReader(line), br)), nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("a fourth upload past what is read whole at once: %v %v", resp, err)
	}

	// Another client's request probes the region, and closes the breaker.
	expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
	if st := b.state(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v after a successful probe, want closed", st)
	}
	// While the trickles wait: an upload that arrives at once probes as
	// any request, is stored, and the breaker closes.
	failThenRecover()
	expect(t, g.put("/cache/c?key=whole&ttl_seconds=60", "all of it"), http.StatusNoContent, "")
	if st := b.state(); st != gobreaker.StateClosed {
		t.Fatalf("breaker %v after an upload probed it, want closed", st)
	}
	expect(t, g.get("/cache/c?key=whole"), http.StatusOK, "all of it")
	if n := pooledRegionState(t, "r", up.URL).probeUploads.Load(); n != 3*5000000 {
		t.Fatalf("%d bytes of uploads being read whole, want the three trickles' (probe_upload_wait ran out before the test was done?)", n)
	}

	// Each trickle is told to retry, and its connection is closed.
	for _, br := range trickles {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" || !resp.Close ||
			!strings.Contains(string(msg), "takes an upload only once it has arrived whole") {
			t.Fatalf("a trickling upload got %d (Retry-After %q, close %v) %q", resp.StatusCode, resp.Header.Get("Retry-After"), resp.Close, msg)
		}
	}
	if n := pooledRegionState(t, "r", up.URL).probeUploads.Load(); n != 0 {
		t.Errorf("%d bytes of uploads still counted as being read whole", n)
	}
	if c := b.counts(); c.TotalFailures != 0 {
		t.Errorf("the trickle counted against the region: %+v", c)
	}
}

// Per-user key prefixes keep users apart for every template that loads,
// whatever characters their ids hold and whatever keys they choose.
// (Values used to be escaped with url.QueryEscape, which leaves -._~ as
// they are: with "{user}-", user "a" reading key "b-x" got user "a-b"'s
// key "x".)
func TestPrefixesIsolateUsers(t *testing.T) {
	up, _ := localUpstream(t, "t")
	ids := []string{"a", "a-b", "a.b", "a_b", "a~b", "a:b", "a%2Db", "a b", "a+b", "é", "e\u0301", "alic", "alice", "b"}
	seps := []string{"-", ".", "_", "~", ":", "/", "+"}
	// One gateway, a handler for each separator under /<i>/, each on a
	// cache of its own, so that the separators run side by side.
	var site strings.Builder
	for i, sep := range seps {
		region := "\t" + strings.ReplaceAll(regionBlock("r", up.URL, "t"), "\n\t", "\n\t\t")
		fmt.Fprintf(&site, "\thandle_path /%d/* {\n\t\tmomento {\n%s\t\t\tkey_prefix {http.request.header.X-User}%s\n\t\t}\n\t}\n", i, strings.TrimSuffix(region, "\t"), sep)
	}
	g := startGateway(t, site.String())
	for i, sep := range seps {
		t.Run("separator "+sep, func(t *testing.T) {
			t.Parallel()
			iso := fmt.Sprintf("/%d/cache/iso%d", i, i)
			as := func(user string) []string { return []string{"X-User", user} }
			// Every user writes, under keys crafted to collide with every
			// other user's namespace, a value naming themselves.
			keys := []string{"x"}
			for _, other := range ids {
				keys = append(keys, other+sep+"x", strings.TrimPrefix(other, "a")+sep+"x")
			}
			// (Users at once, as they would be.)
			var wg sync.WaitGroup
			for _, user := range ids {
				wg.Go(func() {
					for _, k := range keys {
						if r := g.do(http.MethodPut, iso+"?ttl_seconds=600&key="+url.QueryEscape(k), strings.NewReader(user), as(user)...); r.status != 204 {
							t.Errorf("user %q writing key %q got %d %q", user, k, r.status, r.body)
						}
					}
				})
			}
			wg.Wait()
			for _, user := range ids {
				wg.Go(func() {
					for _, k := range keys {
						if r := g.do(http.MethodGet, iso+"?key="+url.QueryEscape(k), nil, as(user)...); r.status != 200 || r.body != user {
							t.Errorf("user %q reading key %q got %d %q: another user's value", user, k, r.status, r.body)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
	// A template whose placeholder has no separator after it is refused.
	for _, tmpl := range []string{"{http.auth.user.id}", "u{http.auth.user.id}x", "{http.auth.user.id}{http.request.header.X-Team}:", "{http.auth.user.id}%"} {
		_, _, err := adaptCaddyfile(":8080 {\n\tmomento {\n\t\tregion us-east-1 {\n\t\t\ttoken t\n\t\t}\n\t\tkey_prefix " + tmpl + "\n\t}\n}\n")
		if err == nil || !strings.Contains(err.Error(), "must be followed by a separator") || !strings.Contains(err.Error(), "Caddyfile:6") {
			t.Errorf("key_prefix %s: %v", tmpl, err)
		}
	}
}

// The browser sees only what the gateway decides: whatever the region (or
// anything between) puts in its answer headers, the client gets none of
// cookies, CORS grants, auth challenges or stray secrets, and always a
// Content-Type the gateway chose, with nosniff.
func TestRegionHeadersNeverReachTheBrowser(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", "https://evil.example")
		h.Set("Access-Control-Allow-Credentials", "true")
		h.Set("Set-Cookie", "session=stolen")
		h.Set("WWW-Authenticate", "Basic realm=x")
		h.Set("X-Echo-Token", r.Header.Get("Authorization"))
		h.Set("Connection", "X-Hop")
		h.Set("X-Hop", "1")
		h.Set("Alt-Svc", `h3=":443"`)
		h.Set("Cache-Control", "max-age=5")
		h.Set("Retry-After", "7")
		if r.URL.Query().Get("key") == "html" {
			h.Set("Content-Type", "text/html")
		} else {
			h["Content-Type"] = nil // no type: a browser would sniff
		}
		if r.URL.Query().Get("key") == "busy" {
			w.WriteHeader(429)
		}
		_, _ = io.WriteString(w, "<script>alert(1)</script>")
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "secret-region-token")+"\t\tcors {\n\t\t\torigins https://app.example.com\n\t\t}\n\t}")
	for _, key := range []string{"plain", "html", "busy"} {
		r := g.do(http.MethodGet, "/cache/c?key="+key, nil, "Origin", "https://app.example.com")
		for _, h := range []string{"Set-Cookie", "WWW-Authenticate", "X-Echo-Token", "X-Hop", "Alt-Svc", "Access-Control-Allow-Credentials"} {
			if v := r.header.Get(h); v != "" {
				t.Errorf("key %s: the client got %s: %q", key, h, v)
			}
		}
		if strings.Contains(fmt.Sprint(r.header), "secret-region-token") {
			t.Errorf("key %s: the token is in the answer's headers", key)
		}
		if got := r.header.Get("Access-Control-Allow-Origin"); got != "https://app.example.com" {
			t.Errorf("key %s: Access-Control-Allow-Origin %q, want the gateway's", key, got)
		}
		if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Cache-Control") != "max-age=5" {
			t.Errorf("key %s: headers %v", key, r.header)
		}
		want, retry := "application/octet-stream", ""
		if key == "busy" {
			want, retry = "text/plain; charset=utf-8", "7"
		}
		if ct := r.header.Get("Content-Type"); ct != want || r.header.Get("Retry-After") != retry {
			t.Errorf("key %s: Content-Type %q, Retry-After %q; want %q, %q", key, ct, r.header.Get("Retry-After"), want, retry)
		}
	}
}

// CORS never opens the door to every site with credentials, nor to the
// "null" origin that sandboxed frames and data: pages send.
func TestCORSRefusesWhatNoSiteShouldGet(t *testing.T) {
	_, _, err := adaptCaddyfile(":8080 {\n\tmomento {\n\t\tregion us-east-1 {\n\t\t\ttoken t\n\t\t}\n\t\tcors {\n\t\t\torigins *\n\t\t\tallow_credentials\n\t\t}\n\t}\n}\n")
	if err == nil || !strings.Contains(err.Error(), "allow_credentials with origins *") || !strings.Contains(err.Error(), "Caddyfile:8") {
		t.Errorf("origins * with allow_credentials: %v", err)
	}
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tcors {\n\t\t\torigins *\n\t\t}\n\t}")
	for _, method := range []string{http.MethodGet, http.MethodOptions} {
		r := g.do(method, "/cache/c?key=k", nil, "Origin", "null", "Access-Control-Request-Method", "GET")
		expect(t, r, 403, "origin null is not allowed")
		if r.header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s from origin null was allowed: %v", method, r.header)
		}
	}
	if up.hits.Load() != 0 {
		t.Error("a request from origin null reached the region")
	}
}

// Without a cors block, pages of other sites cannot write: a cross-site
// form POST would otherwise publish, with the victim's credentials added
// by the browser. Same-origin pages and non-browser clients are unaffected.
func TestWritesFromOtherSitesNeedCORS(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	host := strings.TrimPrefix(g.base, "http://")
	for _, req := range []struct{ method, target string }{
		{"POST", "/topics/c/t"}, {"PUT", "/cache/c?key=k&ttl_seconds=60"}, {"DELETE", "/cache/c?key=k"},
	} {
		expect(t, g.do(req.method, req.target, strings.NewReader("v"), "Origin", "https://evil.example", "Content-Type", "text/plain"),
			403, "add a cors block")
		expect(t, g.do(req.method, req.target, strings.NewReader("v"), "Sec-Fetch-Site", "cross-site", "Content-Type", "text/plain"),
			403, "add a cors block")
	}
	if up.hits.Load() != 0 {
		t.Fatal("a cross-site write reached the region")
	}
	expect(t, g.do("PUT", "/cache/c?key=k&ttl_seconds=60", strings.NewReader("v"), "Origin", "http://"+host, "Sec-Fetch-Site", "same-origin"), 204, "")
	expect(t, g.do("PUT", "/cache/c?key=k&ttl_seconds=60", strings.NewReader("v")), 204, "")
	// Reads stay readable only by the same origin (browsers enforce that);
	// the gateway does not refuse them.
	expect(t, g.do("GET", "/cache/c?key=k", nil, "Origin", "https://evil.example"), 200, "v")
}

// Long polls are bounded: one client cannot hold every subscription the
// account has (Momento admits 100 per region by default) or the gateway's
// memory. Past a limit the answer is 429 with Retry-After and a message
// naming the limit, and nothing is sent to the region.
func TestLongPollsAreBounded(t *testing.T) {
	up, _ := localUpstream(t, "t")
	cases := []struct {
		name, global, region string
		open                 int
		msg                  string
	}{
		{"per region", "", "\t\t\tmax_subscriptions 3\n", 3, "region r has its max_subscriptions (3) subscriptions open"},
		{"per gateway", "\t\tmax_waiting 2\n", "", 2, "this gateway has its max_waiting (2) clients waiting on topics"},
		{"per client address", "\t\tmax_waiting_per_client 1\n", "", 1, "client 127.0.0.1 has its max_waiting_per_client (1) requests waiting on topics"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := runCaddyfile(t, func(port int, logPath string) string {
				return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n"+tc.global+"\t}\n", 1) +
					fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n\t\tregion r {\n\t\t\tendpoint %s\n\t\t\ttoken t\n%s\t\t}\n\t}\n}\n", port, up.URL, tc.region)
			})
			// The count of waiting clients is the process's: the previous
			// case's clients may still be leaving (their requests end when
			// the gateway sees them gone; seen: 2 or 3 of them left).
			waitFor(t, func() bool { return waiters.total.Load() == 0 })
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer func() { cancel(); wg.Wait() }()
			before := up.hits.Load()
			for i := range tc.open {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, _ = (&subscriber{g: g, path: fmt.Sprintf("/topics/c/t%d", i)}).poll(ctx)
				}()
			}
			// Every allowed long poll is waiting at the region.
			waitFor(t, func() bool { return up.hits.Load()-before == int64(tc.open) })
			r := g.get("/topics/c/one-more")
			expect(t, r, http.StatusTooManyRequests, tc.msg)
			if r.header.Get("Retry-After") != "1" {
				t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
			}
			if n := up.hits.Load() - before; n != int64(tc.open) {
				t.Fatalf("the refused long poll reached the region: %d requests", n)
			}
			// Bad input is told so first: a resume it could never make.
			expect(t, g.do(http.MethodGet, "/topics/c/one-more", nil, "Accept", "text/event-stream", "Last-Event-ID", "nonsense"),
				http.StatusBadRequest, "Last-Event-ID \"nonsense\" is not an event id")
			// Other requests are unaffected.
			expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
		})
	}
}

// Clients can run the gateway out of file descriptors by holding
// connections open. That is the gateway's trouble, not the region's: the
// request gets 503 with Retry-After, and the breaker stays closed.
func TestRunningOutOfSocketsCannotOpenTheBreaker(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("counts this process's file descriptors in /proc")
	}
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")
	// The client connects first, and is answered once (a refusal that
	// opens no file and calls no region) so that the gateway has surely
	// accepted the connection; its
	// next request then finds no descriptor left for the gateway to dial the
	// region with.
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Should the gateway never answer, the test fails rather than hangs.
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	br := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, "GET /cache/c HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	first, err := http.ReadResponse(br, nil)
	if err != nil || first.StatusCode != http.StatusBadRequest {
		t.Fatalf("a GET with no key: %v %v", first, err)
	}
	_, _ = io.Copy(io.Discard, first.Body)
	first.Body.Close()
	var was syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	fds, err := os.ReadDir("/proc/self/fd") // the listing's own descriptor is closed again
	if err != nil {
		t.Fatal(err)
	}
	none := syscall.Rlimit{Cur: uint64(len(fds) - 1), Max: was.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &none); err != nil {
		t.Skipf("cannot lower the open files limit: %v", err)
	}
	// Whatever is still free (other goroutines open and close files too).
	var fill []int
	for {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0)
		if err != nil {
			break
		}
		fill = append(fill, fd)
	}
	// Until the answer comes, any descriptor that frees up (goroutines of
	// earlier tests may still be closing theirs) is taken too, so that the
	// gateway's dial finds none.
	stop, taken := make(chan struct{}), make(chan []int)
	go func() {
		var more []int
		for {
			select {
			case <-stop:
				taken <- more
				return
			default:
			}
			if fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, 0); err == nil {
				more = append(more, fd)
			} else {
				runtime.Gosched()
			}
		}
	}()
	_, werr := io.WriteString(conn, "GET /cache/c?key=k HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, rerr := http.ReadResponse(br, nil)
	close(stop)
	fill = append(fill, <-taken...)
	for _, fd := range fill {
		syscall.Close(fd)
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &was); err != nil {
		t.Fatal(err)
	}
	if werr != nil || rerr != nil {
		t.Fatal(werr, rerr)
	}
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("out of sockets: %d %q (Retry-After %q), want 503 with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
	}
	if b := pooledBreaker(t, "r", up.URL); b.state() != gobreaker.StateClosed {
		t.Fatalf("the breaker is %v after the gateway ran out of sockets", b.state())
	}
	expect(t, g.get("/cache/c?key=k"), 404, "Key Not Found")
}

// touchTopic long-polls path and leaves as soon as the topic's hub has
// subscribed upstream, or returns the refusal.
func touchTopic(t *testing.T, g *gateway, up *upstream, path string) (refused error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	before := up.hits.Load()
	go func() {
		_, err := (&subscriber{g: g, path: path}).poll(ctx)
		errc <- err
	}()
	waitFor(t, func() bool {
		select {
		case refused = <-errc:
			return true
		default:
			return up.hits.Load() > before
		}
	})
	if refused == nil {
		cancel()
		<-errc
	}
	return refused
}

// A topic hub outlives its last subscriber for linger, so that the next
// poll finds it; it must not keep its upstream subscription from others.
// A client that touches topic after topic and leaves each would otherwise
// hold every one of the region's max_subscriptions.
func TestLingeringTopicsYieldTheirSubscriptions(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n\t\tregion r {\n\t\t\tendpoint "+up.URL+"\n\t\t\ttoken t\n\t\t\tmax_subscriptions 3\n\t\t}\n\t}")
	rs := pooledRegionState(t, "r", up.URL)
	for i := range 10 {
		if refused := touchTopic(t, g, up, fmt.Sprintf("/topics/c/junk%d", i)); refused != nil {
			t.Fatalf("topic %d, with the earlier ones lingering: %v", i, refused)
		}
		if n := rs.subscriptions.Load(); n > 3 {
			t.Fatalf("%d subscriptions open, over max_subscriptions 3", n)
		}
	}
	// Another client's topic still gets a subscription, and its messages.
	s := &subscriber{g: g, path: "/topics/c/victim"}
	got := make(chan []message, 1)
	go func() { msgs, _ := s.poll(context.Background()); got <- msgs }()
	waitFor(t, func() bool { _, waiting := rs.hubs.counts(); return waiting == 1 })
	expect(t, g.publish("/topics/c/victim", "text/plain", "hello"), http.StatusNoContent, "")
	if msgs := <-got; len(msgs) != 1 || msgs[0].value != "hello" {
		t.Fatalf("the victim got %v", msgs)
	}
}

// With max_ops_per_client, one address cannot spend the region's
// operations (Momento admits 100 a second per region by default) for
// everyone: past its budget it gets 429 with Retry-After, and nothing
// reaches the region; reads answered by the local cache cost nothing, and
// other addresses are served.
func TestOneClientCannotSpendTheRegionForOthers(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := runCaddyfile(t, func(port int, logPath string) string {
		return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n\t\tmax_ops_per_client 5\n\t}\n", 1) +
			fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n%s\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n\t}\n}\n", port, regionBlock("r", up.URL, "t"))
	})
	clientOps().InvalidateAll() // budgets outlive configs: start from full
	before := up.hits.Load()
	ok, refused, stored := 0, 0, ""
	for i := range 50 {
		key := fmt.Sprintf("k%d", i)
		r := g.put("/cache/c?ttl_seconds=60&key="+key, "v")
		switch r.status {
		case http.StatusNoContent:
			ok++
			stored = key
		case http.StatusTooManyRequests:
			refused++
			if !strings.Contains(r.body, "max_ops_per_client (5 calls a second") || r.header.Get("Retry-After") == "" {
				t.Fatalf("refusal: %q, Retry-After %q", r.body, r.header.Get("Retry-After"))
			}
		default:
			t.Fatalf("write %d: %d %s", i, r.status, r.body)
		}
	}
	// Five at once, and five a second after: the loop takes well under 5 s.
	if refused == 0 || ok > 30 {
		t.Fatalf("%d writes stored and %d refused, want most refused", ok, refused)
	}
	if n := up.hits.Load() - before; n != int64(ok) {
		t.Fatalf("%d writes stored but %d reached the region", ok, n)
	}
	// Reads the local cache answers cost nothing (the item is cached by
	// its first read, which may itself have to wait for the budget).
	waitFor(t, func() bool { return g.get("/cache/c?key="+stored).status == 200 })
	for range 20 {
		expect(t, g.get("/cache/c?key="+stored), 200, "v")
	}
	// Another address has its own budget.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	req, _ := http.NewRequest(http.MethodPut, g.base+"/cache/c?key=other&ttl_seconds=60", strings.NewReader("v"))
	resp, err := other.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("another address got %d", resp.StatusCode)
	}
}

// fromAddress is g as seen from another client address on loopback
// (127.0.0.2, say): Linux routes all of 127/8 to lo.
func (g *gateway) fromAddress(ip string) *gateway {
	other := *g
	other.client = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}).DialContext}}
	return &other
}

// flood sends requests from four connections of g's client until the test
// ends, and counts the answers by status and whether the gateway (not the
// region) refused them.
func flood(t *testing.T, g *gateway, req func(i int) *http.Request) (statuses *sync.Map) {
	t.Helper()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	statuses = new(sync.Map)
	for w := range 4 {
		wg.Go(func() {
			for i := w; ; i += 4 {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := g.client.Do(req(i))
				if err != nil {
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				key := strconv.Itoa(resp.StatusCode)
				if resp.StatusCode == http.StatusTooManyRequests && strings.Contains(string(b), "shared among the clients") {
					key += " gateway Retry-After " + resp.Header.Get("Retry-After")
				}
				n, _ := statuses.LoadOrStore(key, new(atomic.Int64))
				n.(*atomic.Int64).Add(1)
			}
		})
	}
	t.Cleanup(func() { close(stop); wg.Wait() })
	return statuses
}

func counted(m *sync.Map, key string) int64 {
	if n, ok := m.Load(key); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

// Momento limits a region's cache operations a second, and answers 429
// past them. One address writing as fast as it can must not take them all:
// once the region refuses, the gateway meters its calls at the rate the
// region took, shares them among the addresses calling, and another
// address writing now and then is served every time.
func TestAGreedyClientCannotUseUpTheRegionsOperations(t *testing.T) {
	up, _ := localUpstreamFrom(t, momentolocal.Handler{Token: "t", MaxOpsPerSecond: 60})
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	rs := pooledRegionState(t, "r", up.URL)
	if st := rs.ops.status(0, time.Now()); st.PerSecond != 0 {
		t.Fatalf("a region that never refused is metered: %+v", st)
	}
	greedy := flood(t, g, func(i int) *http.Request {
		req, _ := http.NewRequest(http.MethodPut, fmt.Sprintf("%s/cache/c?key=g%d&ttl_seconds=60", g.base, i), strings.NewReader("v"))
		return req
	})
	// The region refuses the flood; the gateway learns its rate, and
	// refuses the flood itself.
	waitFor(t, func() bool {
		st := rs.ops.status(0, time.Now())
		return st.Learned && counted(greedy, "429 gateway Retry-After 1") > 0
	})
	// The budget starts empty, as the region's own bucket is when it
	// refuses; the flood is held back from its reserve as it fills.
	waitFor(t, func() bool {
		rs.ops.mu.Lock()
		defer rs.ops.mu.Unlock()
		return rs.ops.tokens+time.Since(rs.ops.at).Seconds()*rs.ops.rate >= 2
	})
	polite := g.fromAddress("127.0.0.2")
	for i := range 3 {
		expect(t, polite.put(fmt.Sprintf("/cache/c?key=p%d&ttl_seconds=60", i), "v"), http.StatusNoContent, "")
		time.Sleep(60 * time.Millisecond) // the polite client's pace: within its share, 27 a second
	}
	if n := counted(greedy, "204"); n == 0 {
		t.Error("the flooding client got nothing through: it should get what the others leave")
	}
}

// With the account's limit configured, the gateway meters from the first
// call: the region never sees more, and the calls are shared likewise.
func TestAConfiguredLimitIsSharedAmongClients(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n\t\tregion r {\n\t\t\tendpoint "+up.URL+"\n\t\t\ttoken t\n\t\t\tmax_publishes_per_second 50\n\t\t}\n\t}")
	start, before := time.Now(), up.hits.Load()
	greedy := flood(t, g, func(i int) *http.Request {
		req, _ := http.NewRequest(http.MethodPost, g.base+"/topics/c/t", strings.NewReader("m"))
		return req
	})
	waitFor(t, func() bool { return counted(greedy, "429 gateway Retry-After 1") > 0 })
	polite := g.fromAddress("127.0.0.2")
	for range 2 {
		expect(t, polite.publish("/topics/c/t", "text/plain", "hello"), http.StatusNoContent, "")
		time.Sleep(100 * time.Millisecond) // the polite client's pace: within its share, 15 a second
	}
	// The greedy address, still flooding, is refused (now and then one of
	// its calls gets a token as it comes: keep asking until refused).
	var r response
	waitFor(t, func() bool {
		r = g.publish("/topics/c/t", "text/plain", "m")
		return r.status != http.StatusNoContent
	})
	expect(t, r, http.StatusTooManyRequests, "region r is at its max_publishes_per_second (50 publishes a second), shared among the clients calling it")
	if r.header.Get("Retry-After") != "1" {
		t.Errorf("Retry-After %q", r.header.Get("Retry-After"))
	}
	sent, most := up.hits.Load()-before, 50+int64(50*time.Since(start).Seconds())+1
	if sent > most {
		t.Errorf("the region took %d publishes in %v: more than 50 a second and a second's burst", sent, time.Since(start))
	}
	if rs := pooledRegionState(t, "r", up.URL); rs.publishes.status(50, time.Now()).Refused == 0 {
		t.Error("the admin API counts no refusals")
	}
}

// Cursors are the client's to choose. Answers the hub encodes for cursors
// outside its buffer (another page, ahead of the topic) are not kept: one
// client polling with a new cursor each time used to make the gateway keep
// every answer, about 1 MiB each, until the next message (3.8 GB from one
// connection in a hostile review).
func TestCursorsCannotGrowTheHub(t *testing.T) {
	up, _ := localUpstreamFrom(t, momentolocal.Handler{Token: "t", TopicBuffer: 100})
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	// A subscriber starts the hub; 60 messages of 4 KiB fill its buffer.
	sub := &subscriber{g: g, path: "/topics/c/t"}
	first := make(chan error, 1)
	go func() { _, err := sub.poll(context.Background()); first <- err }()
	waitFor(t, func() bool { return up.hits.Load() == 1 }) // the hub's subscription
	value := strings.Repeat("x", 4<<10)
	for range 60 {
		expect(t, g.publish("/topics/c/t", "text/plain", value), http.StatusNoContent, "")
	}
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	for sub.seq < 60 {
		if _, err := sub.poll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	before := ms.HeapAlloc
	const polls = 100
	for i := range polls {
		// Another page each time: a discontinuity and the whole buffer.
		r := g.get(fmt.Sprintf("/topics/c/t?sequence_number=0&sequence_page=%d", 1000+i))
		expect(t, r, http.StatusOK, `"discontinuity"`)
		if len(r.body) < 60*len(value) {
			t.Fatalf("answer of %d bytes; want the 60 buffered messages", len(r.body))
		}
		// Ahead of the topic: a discontinuity alone.
		expect(t, g.get(fmt.Sprintf("/topics/c/t?sequence_number=%d", 1000+i)), http.StatusOK, `"discontinuity"`)
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if grew := int64(ms.HeapAlloc) - int64(before); grew > 12<<20 {
		t.Fatalf("the heap grew by %d MiB after %d polls at new cursors (each answer about %d KiB)", grew>>20, polls, 60*len(value)>>10)
	}
}

// An HTTP/2 client can open many streams and never grant the server a byte
// of window: each answer then stays unsent. A long poll's answer is written
// from the hub's messages as they are, shared with every other client, so
// such streams hold little each, however large the answer: here about 1 MiB
// (a cursor on another page gets the whole buffer, 43 messages of 24 KiB of
// JSON), which would be 100 MiB held by 100 streams of one connection if
// each answer were a copy.
func TestStreamsThatGrantNoWindowHoldNoAnswerOfTheirOwn(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGatewayTLS(t, "h2", "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	// A subscriber starts the hub, then 4 KB messages fill its 1 MiB
	// buffer (a control character is 6 bytes of JSON).
	polled := make(chan response, 1)
	go func() { polled <- g.get("/topics/c/big") }()
	waitFor(t, func() bool { return waiters.total.Load() == 1 })
	msg := strings.Repeat("\x01", 4000)
	for range 60 {
		expect(t, g.publish("/topics/c/big", "text/plain", msg), http.StatusNoContent, "")
	}
	expect(t, <-polled, http.StatusOK, `"items":[{"item"`)
	const elsewhere = "/topics/c/big?sequence_number=0&sequence_page=1"
	var size int
	waitFor(t, func() bool {
		r := g.get(elsewhere)
		size = len(r.body)
		return r.status == 200 && strings.Count(r.body, `"item"`) >= 40
	})

	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)

	tc, err := tls.Dial("tcp", strings.TrimPrefix(g.base, "https://"), &tls.Config{RootCAs: g.roots, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_, _ = tc.Write([]byte(http2.ClientPreface))
	fr := http2.NewFramer(tc, tc)
	var writing sync.Mutex // the framer's writes, from the reader's acks and from here
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	const streams = 100
	answered := make(chan string, streams)
	go func() {
		dec := hpack.NewDecoder(4096, nil)
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					writing.Lock()
					_ = fr.WriteSettingsAck()
					writing.Unlock()
				}
			case *http2.HeadersFrame:
				fields, _ := dec.DecodeFull(f.HeaderBlockFragment())
				for _, h := range fields {
					if h.Name == ":status" {
						answered <- h.Value
					}
				}
			}
		}
	}()
	var hdrs bytes.Buffer
	enc := hpack.NewEncoder(&hdrs)
	for i := range streams {
		hdrs.Reset()
		for _, f := range [][2]string{{":method", "GET"}, {":scheme", "https"}, {":authority", strings.TrimPrefix(g.base, "https://")}, {":path", elsewhere}} {
			_ = enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		writing.Lock()
		_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: uint32(2*i + 1), BlockFragment: hdrs.Bytes(), EndStream: true, EndHeaders: true})
		writing.Unlock()
	}
	for range streams {
		if st := <-answered; st != "200" {
			t.Fatalf("a stream was answered %s", st)
		}
	}
	// Every answer has begun and none can be sent.
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("%d streams holding a %d-byte answer each: heap grew %d KiB (%d KiB a stream)", streams, size, grown>>10, grown/streams>>10)
	if grown > int64(streams*size/8) {
		t.Errorf("%d streams that read nothing grew the heap by %d KiB: each holds a copy of its %d KiB answer", streams, grown>>10, size>>10)
	}
	tc.Close()
	waitFor(t, func() bool { return waiters.total.Load() == 0 })
}

// Places held for a while are shared among client networks: the clients
// waiting on topics (max_waiting) and a region's subscriptions
// (max_subscriptions, Momento's 100 a region). One address holding as
// many as it can gets three quarters of them; the last quarter is kept for
// other networks, so that a client elsewhere is still served, and each of
// them gets its share of it.
func TestOneNetworkCannotHoldEveryPlace(t *testing.T) {
	up, _ := localUpstream(t, "t")
	cases := []struct {
		name, global, region string
		topic                func(i int) string
		retryAfter, msg      string
	}{
		{"waiting clients", "\t\tmax_waiting 8\n", "", func(int) string { return "/topics/c/t" },
			"1", "this gateway's max_waiting (8) places are nearly all taken, and clients of 127.0.0.1 hold their share (2) of the rest"},
		{"subscriptions", "", "\t\t\tmax_subscriptions 8\n", func(i int) string { return fmt.Sprintf("/topics/c/t%d", i) },
			"10", "region r's max_subscriptions (8) are nearly all open, and clients of 127.0.0.1 hold their share (2) of the rest"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := runCaddyfile(t, func(port int, logPath string) string {
				return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n"+tc.global+"\t}\n", 1) +
					fmt.Sprintf(":%d {\n\tbind 0.0.0.0\n\tmomento {\n\t\tregion r {\n\t\t\tendpoint %s\n\t\t\ttoken t\n%s\t\t}\n\t}\n}\n", port, up.URL, tc.region)
			})
			waitFor(t, func() bool { return waiters.total.Load() == 0 })
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer func() { cancel(); wg.Wait() }()
			// wait starts a long poll of s and reports whether it waits
			// (true) or was refused (its answer).
			wait := func(s *subscriber) (bool, error) {
				before := waiters.total.Load()
				errc := make(chan error, 1)
				wg.Go(func() {
					_, err := s.poll(ctx)
					errc <- err
				})
				var err error
				waitFor(t, func() bool {
					select {
					case err = <-errc:
						return true
					default:
						return waiters.total.Load() > before
					}
				})
				return err == nil, err
			}
			held := 0
			for i := range 8 {
				ok, err := wait(&subscriber{g: g, path: tc.topic(i)})
				if !ok {
					if !strings.Contains(err.Error(), "429 "+tc.msg) {
						t.Fatalf("the greedy address's long poll %d: %v", i, err)
					}
					break
				}
				held++
			}
			if held != 6 {
				t.Fatalf("one address holds %d of 8 places, want 6", held)
			}
			r := g.get(tc.topic(7))
			expect(t, r, http.StatusTooManyRequests, tc.msg)
			if got := r.header.Get("Retry-After"); got != tc.retryAfter {
				t.Errorf("Retry-After %q, want %q", got, tc.retryAfter)
			}
			// Two other networks each find a place, and are served.
			for i, ip := range []string{"127.0.0.2", "127.0.0.3"} {
				path := "/topics/c/" + strings.ReplaceAll(tc.name, " ", "-") + "-" + ip // new in the embedded backend
				s := &subscriber{g: g.fromAddress(ip), path: path}
				got := make(chan []message, 1)
				go func() {
					msgs, err := s.poll(ctx)
					if err != nil {
						t.Errorf("%s: %v", ip, err)
					}
					got <- msgs
				}()
				waitFor(t, func() bool { return waiters.total.Load() == int64(held+i+1) })
				expect(t, g.publish(path, "text/plain", "for "+ip), http.StatusNoContent, "")
				if msgs := <-got; len(msgs) != 1 || msgs[0].value != "for "+ip {
					t.Fatalf("%s got %v", ip, msgs)
				}
				// It waits again, holding its place.
				if ok, err := wait(s); !ok {
					t.Fatalf("%s's next poll: %v", ip, err)
				}
			}
		})
	}
}

// Starting a topic's subscription is a call to the region, so it counts
// against the client's max_ops_per_client like any other (a client that
// subscribes to topic after topic and leaves makes a call each time);
// joining a topic others already wait on costs the region nothing, and
// does not count. With the hub off, each long poll is a call.
func TestStartingSubscriptionsCountsAgainstTheClientsOps(t *testing.T) {
	up, _ := localUpstream(t, "t")
	for _, hub := range []string{"on", "off"} {
		t.Run("hub "+hub, func(t *testing.T) {
			ip := freshAddress() // an address's budget outlives configs
			g0 := runCaddyfile(t, func(port int, logPath string) string {
				return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n\t\tmax_ops_per_client 2\n\t\ttopics {\n\t\t\thub "+hub+"\n\t\t}\n\t}\n", 1) +
					fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n%s\t}\n}\n", port, regionBlock("r", up.URL, "t"))
			})
			g := g0.fromAddress(ip)
			waitFor(t, func() bool { return waiters.total.Load() == 0 })
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			defer func() { cancel(); wg.Wait() }()
			for i := range 2 {
				wg.Go(func() { _, _ = (&subscriber{g: g, path: fmt.Sprintf("/topics/c/%s%d", hub, i)}).poll(ctx) })
				waitFor(t, func() bool { return waiters.total.Load() == int64(i+1) })
			}
			r := g.get("/topics/c/" + hub + "2")
			expect(t, r, http.StatusTooManyRequests, "client "+ip+" has used its max_ops_per_client (2 calls a second to the regions)")
			if r.header.Get("Retry-After") == "" {
				t.Error("no Retry-After")
			}
			if hub == "on" {
				// A topic with a hub already: joined, not refused.
				wg.Go(func() { _, _ = (&subscriber{g: g, path: "/topics/c/on0"}).poll(ctx) })
				waitFor(t, func() bool { return waiters.total.Load() == 3 })
			}
		})
	}
}

// A client that touches topic after topic, leaving each at once, starts a
// subscription upstream for each, and each lingers (for the next poll) for
// linger. Its lingering hubs count in its network's share: once it holds
// its share it waits for them to end, told so with Retry-After, so that it
// cannot make the region a subscribe call per request; and a client of
// another network is still served.
func TestTouchingTopicAfterTopicStartsFewSubscriptions(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := runCaddyfile(t, func(port int, logPath string) string {
		return globalOptions("off", logPath) +
			fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n\t\tregion r {\n\t\t\tendpoint %s\n\t\t\ttoken t\n\t\t\tmax_subscriptions 8\n\t\t}\n\t}\n}\n", port, up.URL)
	})
	rs := pooledRegionState(t, "r", up.URL)
	before := up.hits.Load()
	started, refused := 0, 0
	for i := range 20 {
		err := touchTopic(t, g, up, fmt.Sprintf("/topics/c/touched%d", i))
		if err == nil {
			started++
			continue
		}
		if !strings.Contains(err.Error(), "429 region r's max_subscriptions (8) are nearly all open, and clients of 127.0.0.1 hold their share (2) of the rest; retry in 10 s") {
			t.Fatalf("topic %d: %v", i, err)
		}
		refused++
	}
	if started != 6 || refused != 14 || up.hits.Load()-before != 6 || rs.subscriptions.Load() != 6 {
		t.Fatalf("20 topics touched: %d started, %d refused, %d subscribe calls upstream, %d open", started, refused, up.hits.Load()-before, rs.subscriptions.Load())
	}
	s := &subscriber{g: g.fromAddress("127.0.0.2"), path: "/topics/c/elsewhere"}
	got := make(chan []message, 1)
	go func() { msgs, _ := s.poll(context.Background()); got <- msgs }()
	waitFor(t, func() bool { return up.hits.Load()-before == 7 })
	expect(t, g.publish("/topics/c/elsewhere", "text/plain", "hello"), http.StatusNoContent, "")
	if msgs := <-got; len(msgs) != 1 || msgs[0].value != "hello" {
		t.Fatalf("another network got %v", msgs)
	}
}

// freshAddress is a loopback address no other test has used in this
// process, for a client whose per-address budgets must start full.
func freshAddress() string {
	n := freshAddresses.Add(1)
	return fmt.Sprintf("127.1.%d.%d", n/250, 1+n%250)
}

var freshAddresses atomic.Int64

// A topic counts in the share of the network whose clients keep it open.
// Another network joining a client's topics, and staying when that client
// leaves, takes them over: it cannot hold the client's share by keeping
// the client's topics open.
func TestJoiningAnothersTopicsMakesThemYours(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := runCaddyfile(t, func(port int, logPath string) string {
		return globalOptions("off", logPath) +
			fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n\t\tregion r {\n\t\t\tendpoint %s\n\t\t\ttoken t\n\t\t\tmax_subscriptions 16\n\t\t}\n\t}\n}\n", port, up.URL)
	})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	hold := func(ctx context.Context, g *gateway, path string) {
		before := waiters.total.Load()
		wg.Go(func() { _, _ = (&subscriber{g: g, path: path}).poll(ctx) })
		waitFor(t, func() bool { return waiters.total.Load() > before })
	}
	// The greedy address holds three quarters, its most.
	for i := range 12 {
		hold(ctx, g, fmt.Sprintf("/topics/c/greedy%d", i))
	}
	// Another network starts its share of the rest, 2 topics...
	polite := g.fromAddress("127.0.0.2")
	politeCtx, leave := context.WithCancel(ctx)
	hold(politeCtx, polite, "/topics/c/polite0")
	hold(politeCtx, polite, "/topics/c/polite1")
	expect(t, polite.get("/topics/c/polite2"), http.StatusTooManyRequests, "clients of 127.0.0.2 hold their share (2)")
	// ...which the greedy address joins, and keeps open when it leaves.
	hold(ctx, g, "/topics/c/polite0")
	hold(ctx, g, "/topics/c/polite1")
	before := waiters.total.Load()
	leave()
	waitFor(t, func() bool { return waiters.total.Load() == before-2 })
	// The polite network holds nothing now, and starts a topic again.
	got := make(chan []message, 1)
	refused := make(chan error, 1)
	go func() {
		msgs, err := (&subscriber{g: polite, path: "/topics/c/polite2"}).poll(ctx)
		refused <- err
		got <- msgs
	}()
	waitFor(t, func() bool {
		select {
		case err := <-refused:
			t.Fatalf("the polite network, holding nothing, was refused: %v", err)
		default:
		}
		return waiters.total.Load() == before-1
	})
	expect(t, g.publish("/topics/c/polite2", "text/plain", "mine"), http.StatusNoContent, "")
	if msgs := <-got; len(msgs) != 1 || msgs[0].value != "mine" {
		t.Fatalf("the polite network got %v", msgs)
	}
}
