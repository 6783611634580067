package momento

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// Benchmarks of the hot path: go test -run '^$' -bench . -benchmem .
// (BENCHMARKS.md has the figures and the end-to-end comparison.)

func benchRequest(b *testing.B, method, target string) *http.Request {
	r := httptest.NewRequest(method, target, nil)
	return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
}

// BenchmarkParseAndRoute: parsing, validation and routing of a get.
func BenchmarkParseAndRoute(b *testing.B) {
	h := &Handler{maxItemSize: defaultMaxItemSize}
	rg := &region{name: "r"}
	h.routes = []compiledRoute{{glob: "sessions-*", region: rg}}
	h.defaultRegion = rg
	r := benchRequest(b, http.MethodGet, "/cache/demo?key=hello")
	b.ReportAllocs()
	for b.Loop() {
		c, _ := parseCall(r)
		if c.refusal != nil {
			b.Fatal(c.refusal.msg)
		}
		if rf := h.checkCall(c, r); rf != nil {
			b.Fatal(rf.msg)
		}
		if h.regionFor(c.cache) != rg {
			b.Fatal("wrong region")
		}
	}
}

// BenchmarkTokenInjection: the upstream request's headers and URL.
func BenchmarkTokenInjection(b *testing.B) {
	rg, err := resolveRegion(RegionConfig{Name: "r", Endpoint: "http://127.0.0.1:1", Token: "a-token"}, caddy.NewReplacer())
	if err != nil {
		b.Fatal(err)
	}
	c := &call{op: opGet, cache: "demo", key: "hello"}
	b.ReportAllocs()
	for b.Loop() {
		hdr := http.Header{"Authorization": rg.token.authHeader()}
		if len(hdr) != 1 || c.upstreamPath(rg.basePath) == "" || c.upstreamQuery() == "" {
			b.Fatal("empty")
		}
	}
}

// BenchmarkBreakerAllow: asking the breaker and reporting a success.
func BenchmarkBreakerAllow(b *testing.B) {
	br := newBreaker("r", (*BreakerConfig)(nil).withDefaults(), zap.NewNop())
	b.ReportAllocs()
	for b.Loop() {
		done, _, ok := br.allow()
		if !ok {
			b.Fatal("refused")
		}
		done(nil)
	}
}

// BenchmarkHandler: the whole handler path of a small get, against the
// embedded backend on loopback.
func BenchmarkHandler(b *testing.B) {
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lh.Close() })
	srv := httptest.NewServer(lh.HTTPHandler())
	b.Cleanup(srv.Close)
	h := provisionHandler(b, Handler{Regions: []RegionConfig{{Name: "bench", Endpoint: srv.URL, Token: "t"}}})

	put := benchRequest(b, http.MethodPut, "/cache/demo?key=hello&ttl_seconds=600")
	put.Body, put.ContentLength = io.NopCloser(bytes.NewReader(make([]byte, 100))), 100
	if w := httptest.NewRecorder(); h.ServeHTTP(w, put, nextHandler{}) != nil || w.Code != 204 {
		b.Fatalf("set: %d", w.Code)
	}
	b.ReportAllocs()
	for b.Loop() {
		w := &discardWriter{header: http.Header{}}
		if err := h.ServeHTTP(w, benchRequest(b, http.MethodGet, "/cache/demo?key=hello"), nextHandler{}); err != nil || w.status != 200 {
			b.Fatalf("get: %d %v", w.status, err)
		}
	}
}

// BenchmarkBreakerOpen: the whole handler path of a request the open
// breaker refuses.
func BenchmarkBreakerOpen(b *testing.B) {
	h := provisionHandler(b, Handler{Regions: []RegionConfig{{Name: "bench-open", Endpoint: "http://127.0.0.1:1", Token: "t"}}})
	h.regions[0].state.breaker.trip()
	b.ReportAllocs()
	for b.Loop() {
		w := &discardWriter{header: http.Header{}}
		if err := h.ServeHTTP(w, benchRequest(b, http.MethodGet, "/cache/demo?key=hello"), nextHandler{}); err != nil || w.status != 503 {
			b.Fatalf("got %d %v", w.status, err)
		}
	}
}

type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
