package momentolocal

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// clock is a time source that moves only when told to.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// backend is a momento_local handler served on loopback, with its clock and
// sweep ticks under the test's control.
type backend struct {
	t     *testing.T
	h     *Handler
	srv   *httptest.Server
	clock *clock
	ticks chan time.Time
	waits chan struct{} // a value each time a subscriber starts waiting
}

func newBackend(t *testing.T, cfg Handler) *backend {
	t.Helper()
	b := &backend{t: t, clock: newClock(), ticks: make(chan time.Time), waits: make(chan struct{}, 4096)}
	cfg.hooks = hooks{
		now:        b.clock.Now,
		sweepTicks: b.ticks,
		onWait:     func() { b.waits <- struct{}{} },
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	b.h = h
	b.srv = httptest.NewServer(h.HTTPHandler())
	t.Cleanup(func() {
		// Close first: it releases waiting subscribers, which the server's
		// Close would otherwise wait for.
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		b.srv.Close()
	})
	return b
}

type response struct {
	status int
	body   string
	header http.Header
}

// do sends one request; body may be nil, and header entries are set as
// given (a nil header sends none).
func (b *backend) do(method, target string, body io.Reader, header map[string]string) response {
	b.t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+target, body)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, target, err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatalf("%s %s: reading body: %v", method, target, err)
	}
	return response{status: resp.StatusCode, body: string(data), header: resp.Header}
}

func (b *backend) put(target, value string) response {
	return b.do(http.MethodPut, target, strings.NewReader(value), nil)
}

func (b *backend) get(target string) response { return b.do(http.MethodGet, target, nil, nil) }

// expect fails the test unless r has the status and, when body is not
// "-", exactly that body.
func (b *backend) expect(what string, r response, status int, body string) {
	b.t.Helper()
	if r.status != status || (body != "-" && r.body != body) {
		b.t.Fatalf("%s: got %d %q, want %d %q", what, r.status, r.body, status, body)
	}
}

// signallingServer serves the backend on a loopback server of its own that
// sends a value on handled each time the handler has returned from a
// request, for tests that break requests off; the test ends it.
func (b *backend) signallingServer() (srv *httptest.Server, handled <-chan struct{}) {
	ch := make(chan struct{}, 1)
	inner := b.h.HTTPHandler()
	srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inner.ServeHTTP(w, r)
		ch <- struct{}{}
	}))
	b.t.Cleanup(srv.Close)
	return srv, ch
}

// tick runs one sweep to completion: the second send cannot be received
// until the sweep started by the first has finished.
func (b *backend) tick() {
	b.ticks <- time.Time{}
	b.ticks <- time.Time{}
}

func TestToken(t *testing.T) {
	const token = "s3cret-token"
	open := newBackend(t, Handler{})
	closed := newBackend(t, Handler{Token: token})

	for _, b := range []*backend{open, closed} {
		b.put("/cache/c?key=k&ttl_seconds=60", "v") // stored only on open
	}

	for _, tc := range []struct {
		name   string
		b      *backend
		query  string
		header string // "" sends no authorization header
		status int
	}{
		{"open, no token", open, "", "", 200},
		{"open, any header", open, "", "whatever", 200},
		{"open, any param", open, "&token=whatever", "", 200},
		{"open, both", open, "&token=a", "a", 400},
		{"header", closed, "", token, 404}, // authorized: miss, as the put above had no token
		{"param", closed, "&token=" + token, "", 404},
		{"missing", closed, "", "", 401},
		{"wrong header", closed, "", "wrong-token", 401},
		{"bearer prefix", closed, "", "Bearer " + token, 401},
		{"wrong param", closed, "&token=wrong-token", "", 401},
		{"prefix of token", closed, "&token=s3cret", "", 401},
		{"both right", closed, "&token=" + token, token, 400},
		{"both wrong", closed, "&token=wrong-token", "wrong-token", 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var header map[string]string
			if tc.header != "" {
				header = map[string]string{"Authorization": tc.header}
			}
			r := tc.b.do(http.MethodGet, "/cache/c?key=k"+tc.query, nil, header)
			if r.status != tc.status {
				t.Errorf("status = %d (%q), want %d", r.status, r.body, tc.status)
			}
			if strings.Contains(r.body, token) || strings.Contains(r.body, "wrong-token") {
				t.Errorf("response echoes a token: %q", r.body)
			}
		})
	}

	b := closed
	auth := map[string]string{"Authorization": token}
	b.expect("authorized put", b.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=60", strings.NewReader("v"), auth), http.StatusNoContent, "")
	b.expect("unauthorized put", b.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=60", strings.NewReader("evil"), nil), http.StatusUnauthorized, "-")
	b.expect("unauthorized delete", b.do(http.MethodDelete, "/cache/c?key=k", nil, nil), http.StatusUnauthorized, "-")
	b.expect("value intact", b.do(http.MethodGet, "/cache/c?key=k", nil, auth), http.StatusOK, "v")
}

func TestOtherPaths(t *testing.T) {
	b := newBackend(t, Handler{})
	for _, path := range []string{"/", "/cache", "/topics", "/topicsx/c/t", "/cachex/c?key=k"} {
		b.expect(path, b.get(path), http.StatusNotFound, "Not Found")
	}

	// In Caddy, other paths go to the next handler, and cache paths don't.
	var nextCalls int
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		nextCalls++
		w.WriteHeader(http.StatusTeapot)
		return nil
	})
	rec := httptest.NewRecorder()
	if err := b.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/elsewhere", nil), next); err != nil {
		t.Fatal(err)
	}
	if nextCalls != 1 || rec.Code != http.StatusTeapot {
		t.Errorf("/elsewhere: next called %d times, status %d; want 1, 418", nextCalls, rec.Code)
	}
	rec = httptest.NewRecorder()
	if err := b.h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/cache/c?key=k", nil), next); err != nil {
		t.Fatal(err)
	}
	if nextCalls != 1 || rec.Code != http.StatusNotFound {
		t.Errorf("/cache/c: next called %d times, status %d; want 1, 404", nextCalls, rec.Code)
	}
}

func TestNewValidates(t *testing.T) {
	const token = "do-not-print-me"
	for _, tc := range []struct {
		name string
		cfg  Handler
		want string
	}{
		{"negative item size", Handler{MaxItemSize: -1}, "max_item_size must be positive"},
		{"negative memory", Handler{MaxMemory: -1}, "max_memory must be positive"},
		{"negative message size", Handler{MaxMessageSize: -1}, "max_message_size must be positive"},
		{"negative topic buffer", Handler{TopicBuffer: -1}, "topic_buffer must be positive"},
		{"item as large as memory", Handler{MaxItemSize: 1 << 20, MaxMemory: 1 << 20}, "max_memory (1048576 bytes) must exceed max_item_size (1048576 bytes)"},
		{"default item, small memory", Handler{MaxMemory: 1 << 20}, "must exceed max_item_size (5242880 bytes)"},
		{"empty cache name", Handler{Caches: []string{"a", ""}}, `caches: "" is not a valid cache name: cache name is empty`},
		{"slash in cache name", Handler{Caches: []string{"a/b"}}, `caches: "a/b" is not a valid cache name`},
		{"dots in cache name", Handler{Caches: []string{".."}}, `must not contain '..'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.Token = token
			h, err := New(tc.cfg)
			if err == nil {
				h.Close()
				t.Fatalf("New succeeded, want error containing %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("error prints the token: %q", err)
			}
		})
	}

	h, err := New(Handler{})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if h.MaxItemSize != DefaultMaxItemSize || h.MaxMemory != DefaultMaxMemory ||
		h.MaxMessageSize != 4096 || h.TopicBuffer != 256 {
		t.Errorf("defaults: max_item_size %d max_memory %d max_message_size %d topic_buffer %d",
			h.MaxItemSize, h.MaxMemory, h.MaxMessageSize, h.TopicBuffer)
	}
}

func TestCloseStopsSweeper(t *testing.T) {
	h, err := New(Handler{})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	<-h.state.sweeper.stopped // Close waits for it; this only proves it ended.
	if err := h.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCaddyLifecycle loads the module the way Caddy does and checks that
// the context ending stops the sweeper.
func TestCaddyLifecycle(t *testing.T) {
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	defer cancel()

	mod, err := ctx.LoadModuleByID("http.handlers.momento_local", json.RawMessage(`{"caches":["a"],"max_item_size":1024,"topic_buffer":8}`))
	if err != nil {
		t.Fatal(err)
	}
	h := mod.(*Handler)
	if h.MaxItemSize != 1024 || h.MaxMemory != DefaultMaxMemory || h.TopicBuffer != 8 || h.MaxMessageSize != DefaultMaxMessageSize {
		t.Errorf("provisioned max_item_size %d max_memory %d topic_buffer %d max_message_size %d",
			h.MaxItemSize, h.MaxMemory, h.TopicBuffer, h.MaxMessageSize)
	}
	rec := httptest.NewRecorder()
	h.HTTPHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/cache/b?key=k", nil))
	if rec.Code != http.StatusNotFound || rec.Body.String() != "Cache Not Found" {
		t.Errorf("got %d %q, want 404 Cache Not Found", rec.Code, rec.Body)
	}

	// A subscriber waiting when the config is unloaded is let go, so that
	// a reload need not wait for it.
	waits := make(chan struct{}, 1)
	h.state.topics.onWait = func() { waits <- struct{}{} }
	srv := httptest.NewServer(h.HTTPHandler())
	defer srv.Close()
	answered := make(chan int, 1)
	go func() {
		r, err := fetch(context.Background(), srv.Client(), http.MethodGet, srv.URL+"/topics/a/t", nil, nil)
		if err != nil {
			t.Error(err)
		}
		answered <- r.status
	}()
	<-waits

	cancel()
	select {
	case <-h.state.sweeper.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the sweeper did not stop when the context ended")
	}
	if status := <-answered; status != http.StatusOK {
		t.Errorf("waiting subscriber got %d when the config was unloaded, want 200 (an empty page)", status)
	}

	if _, err := ctx.LoadModuleByID("http.handlers.momento_local", json.RawMessage(`{"max_memory":1000}`)); err == nil ||
		!strings.Contains(err.Error(), "max_memory (1000 bytes) must exceed") {
		t.Errorf("invalid config: got %v", err)
	}
}

// discardWriter is the least a ResponseWriter can be, so that benchmarks
// measure the handler rather than a recorder.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.header }

func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }

func (w *discardWriter) WriteHeader(status int) { w.status = status }

func (*rewindBody) Close() error { return nil }
