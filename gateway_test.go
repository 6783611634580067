package momento

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/momento-gateway/caddy-momento/momentolocal"
	"github.com/sony/gobreaker/v2"
)

func regionBlock(name, endpoint, token string) string {
	return fmt.Sprintf("\t\tregion %s {\n\t\t\tendpoint %s\n\t\t\ttoken %s\n\t\t}\n", name, endpoint, token)
}

func TestRoundTripThroughEmbeddedBackend(t *testing.T) {
	up, _ := localUpstream(t, "tok-a")
	g := startGateway(t, "\tmomento {\n"+regionBlock("local", up.URL, "tok-a")+"\t}")

	expect(t, g.put("/cache/demo?key=hello&ttl_seconds=60", "world"), http.StatusNoContent, "")
	r := g.get("/cache/demo?key=hello")
	expect(t, r, http.StatusOK, "world")
	if ct := r.header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Content-Type %q, want application/octet-stream", ct)
	}
	// key_base64, padded or not, names the same item as the plain key.
	expect(t, g.get("/cache/demo?key_base64=aGVsbG8"), http.StatusOK, "world")
	expect(t, g.get("/cache/demo?key_base64=aGVsbG8%3D"), http.StatusOK, "world")
	expect(t, g.do(http.MethodDelete, "/cache/demo?key=hello", nil), http.StatusNoContent, "")
	expect(t, g.get("/cache/demo?key=hello"), http.StatusNotFound, "Key Not Found")

	// Paths outside the API go to the next handler.
	expect(t, g.get("/"), http.StatusOK, "next handler")
}

func TestRoutesTwoCachesToTwoRegions(t *testing.T) {
	east, eastStore := localUpstream(t, "tok-east")
	west, westStore := localUpstream(t, "tok-west")
	g := startGateway(t, "\tmomento {\n"+
		regionBlock("east", east.URL, "tok-east")+
		regionBlock("west", west.URL, "tok-west")+
		"\t\troute sessions-* west\n\t\tdefault_region east\n\t}")

	expect(t, g.put("/cache/sessions-eu?key=k&ttl_seconds=60", "in-west"), http.StatusNoContent, "")
	expect(t, g.put("/cache/orders?key=k&ttl_seconds=60", "in-east"), http.StatusNoContent, "")
	if westStore.Len() != 1 || eastStore.Len() != 1 {
		t.Fatalf("items: west %d, east %d; want 1 each", westStore.Len(), eastStore.Len())
	}
	if a := west.lastAuth.Load(); a != "tok-west" {
		t.Errorf("west saw authorization %q", a)
	}
	if a := east.lastAuth.Load(); a != "tok-east" {
		t.Errorf("east saw authorization %q", a)
	}
	expect(t, g.get("/cache/sessions-eu?key=k"), http.StatusOK, "in-west")
	expect(t, g.get("/cache/orders?key=k"), http.StatusOK, "in-east")
}

func TestUnroutedCacheIsNotFound(t *testing.T) {
	a, _ := localUpstream(t, "t")
	b, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("a", a.URL, "t")+regionBlock("b", b.URL, "t")+
		"\t\troute users-* a\n\t}")
	expect(t, g.get("/cache/other?key=k"), http.StatusNotFound, "Cache Not Found")
	if a.hits.Load()+b.hits.Load() != 0 {
		t.Fatal("an unrouted cache reached a region")
	}
	expect(t, g.get("/cache/users-1?key=k"), http.StatusNotFound, "Key Not Found")
}

func TestClientTokenIsStrippedAndReplaced(t *testing.T) {
	up, _ := localUpstream(t, "server-token")
	g := startGateway(t, "\tmomento {\n"+regionBlock("local", up.URL, "server-token")+"\t}")

	r := g.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=5&token=client-token", strings.NewReader("v"),
		"Authorization", "client-header-token")
	expect(t, r, http.StatusNoContent, "")
	if a := up.lastAuth.Load(); a != "server-token" {
		t.Errorf("upstream saw authorization %q, want the server's token", a)
	}
	uri := up.lastURI.Load().(string)
	if strings.Contains(uri, "token") || strings.Contains(uri, "client") {
		t.Errorf("upstream request URI %q carries the client's token", uri)
	}
	if uri != "/cache/c?key=k&ttl_seconds=5" {
		t.Errorf("upstream request URI %q", uri)
	}
	// The gateway names itself, not Go's default client.
	if ua := up.lastUA.Load().(string); !strings.HasPrefix(ua, "caddy-momento/") {
		t.Errorf("upstream saw User-Agent %q", ua)
	}
}

func TestClientTokenReject(t *testing.T) {
	up, _ := localUpstream(t, "server-token")
	g := startGateway(t, "\tmomento {\n"+regionBlock("local", up.URL, "server-token")+"\t\tclient_token reject\n\t}")

	expect(t, g.get("/cache/c?key=k&token=mine"), http.StatusBadRequest, "does not accept client credentials")
	expect(t, g.do(http.MethodGet, "/cache/c?key=k", nil, "Authorization", "mine"), http.StatusBadRequest, "does not accept client credentials")
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("refused requests reached the region %d times", n)
	}
	expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
}

// Malformed requests are answered at the edge (the cases are in
// call_test.go) and never reach the region.
func TestValidationAtTheEdge(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("local", up.URL, "t")+"\t\tmax_item_size 1KiB\n\t}")
	expect(t, g.get("/cache/c"), 400, "key (or key_base64) is required")
	expect(t, g.put("/cache/c?key=a", "v"), 400, "ttl_seconds is required")
	expect(t, g.get("/cache/a%2Fb?key=a"), 400, "must not contain '/'")
	r := g.do("PATCH", "/cache/c?key=a", nil)
	expect(t, r, 405, "use GET, PUT or DELETE")
	if r.header.Get("Allow") != "GET, PUT, DELETE" {
		t.Errorf("Allow %q", r.header.Get("Allow"))
	}
	expect(t, g.put("/cache/c?key=a&ttl_seconds=5", strings.Repeat("x", 1024)), 413, "item of 1025 bytes (key 1 + value 1024) exceeds max_item_size (1024 bytes")
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("invalid requests reached the region %d times", n)
	}
}

func TestStreamsAFiveMiBValue(t *testing.T) {
	// The upstream signals when the first bytes of the upload reach it; the
	// client sends the second half only then. A gateway that buffered the
	// whole value would deadlock here (and the test would time out).
	lh, err := localUpstreamHandler(t)
	if err != nil {
		t.Fatal(err)
	}
	firstBytes := make(chan struct{})
	var once sync.Once
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPut {
			r.Body = readNotifier{r.Body, func() { once.Do(func() { close(firstBytes) }) }}
		}
		lh.ServeHTTP(w, r)
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("local", up.URL, "t")+"\t}")

	value := make([]byte, 5<<20-16) // the key counts against the backend's 5 MiB item limit
	_, _ = rand.Read(value)
	pr, pw := io.Pipe()
	go func() {
		half := len(value) / 2
		_, _ = pw.Write(value[:half])
		select {
		case <-firstBytes:
		case <-time.After(20 * time.Second):
			pw.CloseWithError(errors.New("upstream never saw the first half: the gateway buffers uploads"))
			return
		}
		_, _ = pw.Write(value[half:])
		pw.Close()
	}()
	expect(t, g.do(http.MethodPut, "/cache/big?key=v&ttl_seconds=60", pr), http.StatusNoContent, "")

	r := g.get("/cache/big?key=v")
	if r.status != 200 || !bytes.Equal([]byte(r.body), value) {
		t.Fatalf("GET returned %d and %d bytes; want 200 and the %d bytes written", r.status, len(r.body), len(value))
	}
}

func localUpstreamHandler(t *testing.T) (http.Handler, error) {
	_, lh := localUpstream(t, "t")
	return lh.HTTPHandler(), nil
}

type readNotifier struct {
	io.ReadCloser
	first func()
}

func (r readNotifier) Read(p []byte) (int, error) {
	n, err := r.ReadCloser.Read(p)
	if n > 0 {
		r.first()
	}
	return n, err
}

func TestChunkedUploadOverLimitIsAbortedAndNotCounted(t *testing.T) {
	up, lh := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("local", up.URL, "t")+
		"\t\tmax_item_size 64KiB\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")

	// An io.Pipe body has no length: the client sends it chunked.
	pr, pw := io.Pipe()
	go func() {
		// 192 KiB: past the limit, yet small enough that the server drains
		// the rest after answering (net/http drains up to 256 KiB), so the
		// client reads the 413 instead of a connection reset.
		chunk := bytes.Repeat([]byte("x"), 8<<10)
		for i := 0; i < 24; i++ {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Close()
	}()
	r := g.do(http.MethodPut, "/cache/c?key=big&ttl_seconds=60", pr)
	pr.Close()
	expect(t, r, http.StatusRequestEntityTooLarge, "item exceeds max_item_size (65536 bytes, key plus value); nothing was stored")
	if lh.Len() != 0 {
		t.Fatalf("the backend stored %d items from an aborted upload", lh.Len())
	}
	// With failures 1, a counted failure would have opened the breaker.
	expect(t, g.put("/cache/c?key=small&ttl_seconds=60", "ok"), http.StatusNoContent, "")
	expect(t, g.get("/cache/c?key=big"), http.StatusNotFound, "Key Not Found")
}

// failing is an upstream whose behaviour the test switches.
type failing struct {
	mu      sync.Mutex
	status  int           // answer with this status and body "boom"
	hold    chan struct{} // when set, hold requests until closed
	holding chan struct{} // receives one value per held request
}

func (f *failing) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	status, hold, holding := f.status, f.hold, f.holding
	f.mu.Unlock()
	if hold != nil {
		holding <- struct{}{}
		select {
		case <-hold:
		case <-r.Context().Done():
			return
		}
	}
	if status == 0 {
		status = http.StatusNoContent
	}
	w.WriteHeader(status)
	if status != http.StatusNoContent {
		_, _ = io.WriteString(w, "boom")
	}
}

func (f *failing) set(status int) {
	f.mu.Lock()
	f.status = status
	f.mu.Unlock()
}

func (f *failing) holdRequests() (release func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hold = make(chan struct{})
	f.holding = make(chan struct{}, 64)
	hold := f.hold
	return func() {
		f.mu.Lock()
		f.hold = nil
		f.mu.Unlock()
		close(hold)
	}
}

func TestBreakerOpensAndRejectsWithoutUpstreamTraffic(t *testing.T) {
	f := &failing{status: 500}
	bad := newUpstream(t, f)
	good, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("bad", bad.URL, "t")+regionBlock("good", good.URL, "t")+
		"\t\troute bad-* bad\n\t\tdefault_region good\n\t\tbreaker {\n\t\t\tfailures 3\n\t\t\topen_for 1m\n\t\t}\n\t}")

	for i := 0; i < 3; i++ {
		// The region's own 500 and body reach the client unchanged.
		expect(t, g.get("/cache/bad-1?key=k"), http.StatusInternalServerError, "boom")
	}
	r := g.get("/cache/bad-1?key=k")
	expect(t, r, http.StatusServiceUnavailable, "region bad is unavailable")
	if ra := r.header.Get("Retry-After"); ra != "60" && ra != "59" {
		t.Errorf("Retry-After %q, want about 60", ra)
	}
	for i := 0; i < 10; i++ {
		expect(t, g.get("/cache/bad-2?key=k"), http.StatusServiceUnavailable, "circuit breaker is open")
	}
	if n := bad.hits.Load(); n != 3 {
		t.Fatalf("the failing region received %d requests, want 3 (none while open)", n)
	}
	// The other region is untouched.
	expect(t, g.put("/cache/fine?key=k&ttl_seconds=9", "v"), http.StatusNoContent, "")
	expect(t, g.get("/cache/fine?key=k"), http.StatusOK, "v")

	// The operator sees the transition in the log, with the counts that caused it.
	var transition string
	for _, line := range strings.Split(g.logs(), "\n") {
		if strings.Contains(line, "circuit breaker state changed") {
			transition = line
		}
	}
	for _, want := range []string{`"level":"warn"`, `"region":"bad"`, `"from":"closed"`, `"to":"open"`, `"consecutive_failures":3`} {
		if !strings.Contains(transition, want) {
			t.Errorf("breaker transition log %q lacks %s", transition, want)
		}
	}
}

func TestUpstreamConnectionsAreReused(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	for i := 0; i < 50; i++ {
		expect(t, g.put(fmt.Sprintf("/cache/c?key=k%d&ttl_seconds=60", i), "v"), http.StatusNoContent, "")
		expect(t, g.get(fmt.Sprintf("/cache/c?key=k%d", i)), http.StatusOK, "v")
	}
	if n := up.conns.Load(); n != 1 {
		t.Fatalf("100 sequential requests opened %d upstream connections, want 1", n)
	}
}

func TestFailureRatioOpensBreaker(t *testing.T) {
	f := &failing{}
	up := newUpstream(t, f)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\tbreaker {\n\t\t\tfailures 100\n\t\t\tfailure_ratio 0.5\n\t\t\tmin_requests 4\n\t\t}\n\t}")
	// Alternate success and failure: never 2 failures in a row, but half fail.
	for i := 0; i < 4; i++ {
		f.set([]int{204, 500}[i%2])
		g.get("/cache/c?key=k")
	}
	expect(t, g.get("/cache/c?key=k"), http.StatusServiceUnavailable, "circuit breaker is open")
}

func TestClientErrorsAndThrottlingAreNotFailures(t *testing.T) {
	f := &failing{status: http.StatusUnauthorized}
	up := newUpstream(t, f)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tbreaker {\n\t\t\tfailures 2\n\t\t}\n\t}")
	for range 5 {
		expect(t, g.get("/cache/c?key=k"), http.StatusUnauthorized, "boom")
	}
	// The region's 429s: passed on, and from then on the gateway meters
	// the region's calls itself (see budget.go), answering 429 too.
	f.set(http.StatusTooManyRequests)
	expect(t, g.get("/cache/c?key=k"), http.StatusTooManyRequests, "boom")
	for range 4 {
		expect(t, g.get("/cache/c?key=k"), http.StatusTooManyRequests, "")
	}
	b := pooledBreaker(t, "r", up.URL)
	if c := b.counts(); c.TotalFailures != 0 || b.state() != gobreaker.StateClosed {
		t.Fatalf("breaker %v with %+v: 4xx must not open it", b.state(), c)
	}
}

// A region past its account's operations a second answers 429 without
// Retry-After, as Momento does: the client is told when to retry all the
// same, reads the region's own message, and the breaker counts nothing.
func TestTheRegionsRateLimitReachesClientsWithRetryAfter(t *testing.T) {
	up, _ := localUpstreamFrom(t, momentolocal.Handler{Token: "t", MaxOpsPerSecond: 3})
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")
	refused := 0
	for i := range 10 {
		r := g.put(fmt.Sprintf("/cache/c?key=k%d&ttl_seconds=60", i), "v")
		switch {
		case r.status == http.StatusNoContent:
		case r.status == http.StatusTooManyRequests && strings.Contains(r.body, "shared among the clients"):
			// Refused by the gateway, which meters the region's calls
			// once it refuses (see budget.go).
		case r.status == http.StatusTooManyRequests:
			refused++
			if r.header.Get("Retry-After") != "1" || !strings.Contains(r.body, "momento_local \"default\" allows 3 cache operations a second") {
				t.Fatalf("the region's 429: Retry-After %q, %q", r.header.Get("Retry-After"), r.body)
			}
		default:
			t.Fatalf("write %d: %d %q", i, r.status, r.body)
		}
	}
	if refused == 0 {
		t.Fatal("ten writes at once to a region that takes three a second: the region refused none")
	}
	if c := pooledBreaker(t, "r", up.URL).counts(); c.TotalFailures != 0 {
		t.Fatalf("the region's 429 counted against it: %+v", c)
	}
}

func TestTransportFailuresMapTo502And504(t *testing.T) {
	reset := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			return
		}
		_ = conn.(*net.TCPConn).SetLinger(0) // RST, not FIN
		conn.Close()
	}))
	hang := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	}))
	refused := refusedURL(t)
	g := startGateway(t, "\tmomento {\n"+
		regionBlock("refused", refused, "t")+regionBlock("reset", reset.URL, "t")+regionBlock("hang", hang.URL, "t")+
		"\t\troute refused-* refused\n\t\troute reset-* reset\n\t\troute hang-* hang\n"+
		"\t\ttimeout 100ms\n\t\tbreaker {\n\t\t\tfailures 2\n\t\t}\n\t}")

	expect(t, g.get("/cache/refused-1?key=k"), http.StatusBadGateway, "region refused could not be reached (connection failed)")
	expect(t, g.get("/cache/reset-1?key=k"), http.StatusBadGateway, "region reset could not be reached")
	expect(t, g.get("/cache/hang-1?key=k"), http.StatusGatewayTimeout, "region hang did not answer within 100ms")

	// Each of them counts as a failure: the second opens each breaker.
	g.get("/cache/refused-1?key=k")
	g.get("/cache/reset-1?key=k")
	g.get("/cache/hang-1?key=k")
	for _, c := range []string{"refused-1", "reset-1", "hang-1"} {
		expect(t, g.get("/cache/"+c+"?key=k"), http.StatusServiceUnavailable, "circuit breaker is open")
	}
	// The gateway's own log lines name the region, never the client's key
	// (Caddy's access log, which the operator configures, is another matter).
	for _, line := range strings.Split(g.logs(), "\n") {
		if strings.Contains(line, `"logger":"http.handlers.momento"`) && strings.Contains(line, "key=k") {
			t.Errorf("log line contains the client's key: %s", line)
		}
	}
}

func TestClientDisconnectCountsAsNeither(t *testing.T) {
	arrived := make(chan struct{}, 1)
	gone := make(chan struct{}, 1)
	hang := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-r.Context().Done()
		gone <- struct{}{}
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", hang.URL, "t")+"\t\ttimeout 1m\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.base+"/cache/c?key=k", nil)
	errc := make(chan error, 1)
	go func() {
		resp, err := g.client.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errc <- err
	}()
	<-arrived
	cancel()
	<-errc
	<-gone // the client's cancellation reached the region: the call was cancelled upstream

	b := pooledBreaker(t, "r", hang.URL)
	waitFor(t, func() bool { c := b.counts(); return c.TotalExclusions == 1 })
	if c := b.counts(); c.TotalFailures != 0 || c.TotalSuccesses != 0 || b.state() != gobreaker.StateClosed {
		t.Fatalf("after a client disconnect: counts %+v, state %v; want neither success nor failure", c, b.state())
	}
}

// pooledBreaker finds the breaker that a region's requests go through.
func pooledBreaker(t *testing.T, name, endpoint string) *breaker {
	t.Helper()
	return pooledRegionState(t, name, endpoint).breaker
}

// pooledRegionState finds a region's state kept across reloads.
func pooledRegionState(t *testing.T, name, endpoint string) *regionState {
	t.Helper()
	var found *regionState
	regionStates.Range(func(k, v any) bool {
		if k == name+" "+endpoint {
			found = v.(*regionState)
			return false
		}
		return true
	})
	if found == nil {
		t.Fatalf("no pooled region %s at %s", name, endpoint)
	}
	return found
}

// waitFor polls a condition that another goroutine makes true soon after
// an event the test already observed (here: the handler's last statement).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(time.Millisecond)
	}
}

func TestUpstreamAnswersPassUnchanged(t *testing.T) {
	up, _ := localUpstream(t, "right")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "wrong")+"\t}")
	r := g.get("/cache/c?key=k")
	if r.status != http.StatusUnauthorized {
		t.Fatalf("got %d %q; want the backend's 401", r.status, r.body)
	}
}

// A client that leaves in the middle of a long answer is not the region's
// failure, whichever side notices first.
func TestClientLeavingMidAnswerIsNotAFailure(t *testing.T) {
	upstreamDone := make(chan struct{}, 1)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		defer func() { upstreamDone <- struct{}{} }()
		w.Header().Set("Content-Length", "1000000")
		_, _ = w.Write(make([]byte, 64<<10))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the rest never comes: the client leaves first
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 1m\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")

	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.base+"/cache/c?key=k", nil)
	resp, err := g.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
		t.Fatal(err)
	}
	cancel()
	resp.Body.Close()
	<-upstreamDone // the gateway cancelled its upstream call

	b := pooledBreaker(t, "r", up.URL)
	waitFor(t, func() bool { return b.counts().TotalExclusions == 1 })
	if c := b.counts(); c.TotalFailures != 0 || b.state() != gobreaker.StateClosed {
		t.Fatalf("a client leaving mid-answer counted against the region: %+v, %v", c, b.state())
	}
}

// An upload to a region that refuses connections is answered 502 at once,
// even while the client is still sending: the gateway does not wait for a
// body the region will never take (it used to close the client's body,
// which made net/http drain it first, and answer 408 after the timeout).
func TestUploadToAnUnreachableRegionFailsAtOnce(t *testing.T) {
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", refusedURL(t), "t")+"\t\ttimeout 1m\n\t}")
	// 10 of 100 bytes, and then nothing: were the gateway to wait for the
	// rest, rawRequest would give up after 10 s.
	status, body := rawRequest(t, g, "PUT /cache/c?key=k&ttl_seconds=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	if status != http.StatusBadGateway || !strings.Contains(body, "region r could not be reached (connection failed)") {
		t.Fatalf("got %d %q", status, body)
	}
}
