package momento

import (
	"context"
	"time"

	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"

	"github.com/sony/gobreaker/v2"
)

// How the proxy tells what happened, and whom it blames: the region (a
// breaker failure), nobody (a success), or the client (excluded). The
// handler is called directly, in front of upstreams that misbehave on
// purpose; end-to-end versions of some cases are in gateway_test.go.
func TestProxyClassifiesOutcomes(t *testing.T) {
	answer := func(status int, body string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(status)
			_, _ = io.WriteString(w, body)
		}
	}
	cutOff := func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1000")
		_, _ = io.WriteString(w, "partial")
		w.(http.Flusher).Flush()
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}
	reset := func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		_ = conn.(*net.TCPConn).SetLinger(0)
		conn.Close()
	}
	hang := func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }
	// A region waiting for the rest of an upload (reading, so its server
	// sees the gateway hang up).
	readAll := func(w http.ResponseWriter, r *http.Request) { _, _ = io.Copy(io.Discard, r.Body) }
	const (
		success = "success"
		failure = "failure"
		neither = "neither"
	)
	cases := []struct {
		name    string
		region  http.HandlerFunc // nil: nothing listens
		method  string
		body    io.Reader
		cancel  bool // the client leaves once the region has the request
		status  int
		msg     string
		abort   bool
		outcome string
	}{
		{"answer", answer(200, "v"), "GET", nil, false, 200, "v", false, success},
		{"miss", answer(404, "Key Not Found"), "GET", nil, false, 404, "Key Not Found", false, success},
		{"throttled", answer(429, "slow down"), "GET", nil, false, 429, "slow down", false, success},
		{"unauthorized", answer(401, "bad token"), "GET", nil, false, 401, "bad token", false, success},
		{"region error", answer(503, "boom"), "GET", nil, false, 503, "boom", false, failure},
		{"refused connection", nil, "GET", nil, false, 502, "region r could not be reached (connection failed)", false, failure},
		{"reset connection", reset, "GET", nil, false, 502, "region r could not be reached", false, failure},
		{"no answer in time", hang, "GET", nil, false, 504, "region r did not answer within 200ms", false, failure},
		{"cut off mid-answer", cutOff, "GET", nil, false, 200, "partial", true, failure},
		{"client leaves", hang, "GET", nil, true, 499, "", false, neither},
		{"upload stalls", readAll, "PUT", stalledUpload(t), false, 408, "the value stopped arriving for 200ms; nothing was stored", false, neither},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			endpoint := refusedURL(t)
			arrived := make(chan struct{}, 1)
			if tc.region != nil {
				up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					select {
					case arrived <- struct{}{}:
					default:
					}
					tc.region(w, r)
				}))
				endpoint = up.URL
			}
			h := provisionHandler(t, Handler{Regions: []RegionConfig{{Name: "r", Endpoint: endpoint, Token: "t"}}, Timeout: caddy.Duration(200 * time.Millisecond)})

			target := "/cache/c?key=k"
			if tc.method == "PUT" {
				target += "&ttl_seconds=60"
			}
			r := httptest.NewRequest(tc.method, target, tc.body)
			if tc.body != nil {
				r.ContentLength = 100
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			r = r.WithContext(ctx)
			if tc.cancel {
				go func() { <-arrived; cancel() }()
			}
			w := httptest.NewRecorder()
			aborted := serveRecovering(h, w, r)

			if w.Code != tc.status || !strings.Contains(w.Body.String(), tc.msg) || aborted != tc.abort {
				t.Fatalf("got %d %q (aborted %v); want %d %q (aborted %v)", w.Code, w.Body.String(), aborted, tc.status, tc.msg, tc.abort)
			}
			c := h.regions[0].state.breaker.counts()
			got := neither
			switch {
			case c.TotalFailures == 1:
				got = failure
			case c.TotalSuccesses == 1:
				got = success
			}
			if got != tc.outcome || c.Requests > 1 || h.regions[0].state.breaker.state() != gobreaker.StateClosed && tc.outcome != failure {
				t.Fatalf("breaker counted %s (%+v); want %s", got, c, tc.outcome)
			}
		})
	}
}

// serveRecovering calls the handler and reports whether it aborted the
// answer (panic(http.ErrAbortHandler), as net/http expects).
func serveRecovering(h *Handler, w http.ResponseWriter, r *http.Request) (aborted bool) {
	defer func() {
		if v := recover(); v != nil {
			if err, ok := v.(error); !ok || !errors.Is(err, http.ErrAbortHandler) {
				panic(v)
			}
			aborted = true
		}
	}()
	_ = h.ServeHTTP(w, r, nextHandler{})
	return false
}

// stalledUpload is an upload whose client sent 10 bytes of 100 and then
// nothing more: a read blocks until the body is closed.
func stalledUpload(t *testing.T) io.Reader {
	pr, pw := io.Pipe()
	go func() { _, _ = pw.Write([]byte("0123456789")) }()
	t.Cleanup(func() { pw.Close() })
	return pr
}
