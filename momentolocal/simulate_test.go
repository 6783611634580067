package momentolocal

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/caddyserver/caddy/v2"
)

func TestRateLimit(t *testing.T) {
	var l rateLimit
	const ms = int64(time.Millisecond)
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	if ok, _ := l.allow(t0); !ok {
		t.Fatal("no limit set, and an operation was refused")
	}

	l.set(100)
	for i := range 100 {
		if ok, _ := l.allow(t0); !ok {
			t.Fatalf("operation %d of a burst of 100 refused", i)
		}
	}
	if ok, perSecond := l.allow(t0); ok || perSecond != 100 {
		t.Fatalf("the 101st operation at once: admitted %v (limit %d); want refused, 100", ok, perSecond)
	}
	for _, step := range []struct {
		at   int64
		want bool
	}{
		{t0 + 10*ms - 1, false}, // a token takes 10ms to come back
		{t0 + 10*ms, true},
		{t0 + 10*ms, false},
		{t0 + 35*ms, true}, // 25ms later: two tokens came back
		{t0 + 35*ms, true},
		{t0 + 35*ms, false},
	} {
		if ok, _ := l.allow(step.at); ok != step.want {
			t.Fatalf("at +%v: admitted %v, want %v", time.Duration(step.at-t0), ok, step.want)
		}
	}

	// After a second idle, a whole burst again, and no more.
	t1 := t0 + 2*int64(time.Second)
	admitted := 0
	for range 150 {
		if ok, _ := l.allow(t1); ok {
			admitted++
		}
	}
	if admitted != 100 {
		t.Errorf("after a second idle: %d of 150 admitted at once, want 100", admitted)
	}

	// Sustained: asking every millisecond for 10 s gets the burst and then
	// exactly one operation every 10ms.
	admitted = 0
	t2 := t1 + 5*int64(time.Second)
	for now := t2; now < t2+10*int64(time.Second); now += ms {
		if ok, _ := l.allow(now); ok {
			admitted++
		}
	}
	if admitted != 100+999 {
		t.Errorf("10s of asking every ms: %d admitted, want 1099 (a burst of 100, then one every 10ms after it)", admitted)
	}

	// A rate that does not divide a second rounds the interval up: never
	// more than the rate.
	l.set(3)
	admitted = 0
	t3 := t2 + 20*int64(time.Second)
	for now := t3; now < t3+int64(time.Second); now += ms {
		if ok, _ := l.allow(now); ok {
			admitted++
		}
	}
	if admitted != 3+2 { // the burst at once, then at +333.3ms and +666.7ms
		t.Errorf("3 a second, asking every ms for a second: %d admitted, want 5", admitted)
	}

	l.set(0)
	for range 1000 {
		if ok, _ := l.allow(t3); !ok {
			t.Fatal("limit removed, and an operation was refused")
		}
	}
}

// expect429 checks a refusal by a simulated limit: 429, a body naming the
// limit, and no Retry-After, since Momento documents none.
func expect429(t *testing.T, what string, r response, body string) {
	t.Helper()
	if r.status != http.StatusTooManyRequests || r.body != body {
		t.Fatalf("%s: got %d %q, want 429 %q", what, r.status, r.body, body)
	}
	if ra := r.header.Get("Retry-After"); ra != "" {
		t.Errorf("%s: Retry-After %q, want none", what, ra)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("%s: Content-Type %q", what, ct)
	}
}

func TestCacheOpsLimit(t *testing.T) {
	b := newBackend(t, Handler{MaxOpsPerSecond: 4, Caches: []string{"c"}})
	const refused = `too many requests: momento_local "default" allows 4 cache operations a second (max_ops_per_second)`

	b.expect("set", b.put("/cache/c?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
	// What the backend refuses before performing takes no token.
	b.expect("missing key", b.get("/cache/c"), http.StatusBadRequest, "-")
	b.expect("other cache", b.get("/cache/x?key=k"), http.StatusNotFound, "Cache Not Found")
	b.expect("get", b.get("/cache/c?key=k"), http.StatusOK, "v")
	b.expect("delete", b.do(http.MethodDelete, "/cache/c?key=k", nil, nil), http.StatusNoContent, "")
	b.expect("a miss is an operation", b.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
	expect429(t, "fifth operation", b.get("/cache/c?key=k"), refused)
	expect429(t, "a set too", b.put("/cache/c?key=k&ttl_seconds=60", "w"), refused)
	// Topics are limited apart.
	b.expect("publish", b.publish("/topics/c/t", "text/plain", "m"), http.StatusNoContent, "")

	b.clock.Advance(time.Second/4 - time.Nanosecond)
	expect429(t, "just before a token", b.get("/cache/c?key=k"), refused)
	b.clock.Advance(time.Nanosecond)
	b.expect("a token later; the refused set stored nothing", b.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
	expect429(t, "and only one", b.get("/cache/c?key=k"), refused)
	if n := b.h.state.limits.throttled[limitOps].Load(); n != 4 {
		t.Errorf("%d cache operations counted as throttled, want 4", n)
	}
}

func TestPublishLimit(t *testing.T) {
	b := newBackend(t, Handler{MaxPublishesPerSecond: 2})
	const refused = `too many requests: momento_local "default" allows 2 publishes a second (max_publishes_per_second)`

	b.expect("publish 0", b.publish("/topics/c/t", "text/plain", "0"), http.StatusNoContent, "")
	b.expect("publish 1", b.publish("/topics/c/u", "text/plain", "1"), http.StatusNoContent, "")
	expect429(t, "publish 2", b.publish("/topics/c/t", "text/plain", "2"), refused)
	// Subscribes and cache operations are not publishes.
	for range 3 {
		e := b.subscribe("/topics/c/t")
		b.expectEntries("subscribe", e, textItem(0, e[0].Page, "0"))
	}
	b.expect("set", b.put("/cache/c?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")

	b.clock.Advance(time.Second / 2)
	b.expect("half a second later", b.publish("/topics/c/t", "text/plain", "3"), http.StatusNoContent, "")
	expect429(t, "and only one", b.publish("/topics/c/t", "text/plain", "4"), refused)
	e := b.subscribe("/topics/c/t")
	b.expectEntries("what was published", e, textItem(0, e[0].Page, "0"), textItem(1, e[0].Page, "3"))
}

func TestSubscriptionLimit(t *testing.T) {
	b := newBackend(t, Handler{MaxSubscriptions: 2})
	const refused = `too many subscriptions: momento_local "default" allows 2 at once (max_subscriptions)`

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	first := b.subscribeAsync(ctx, "/topics/c/t")
	b.waiting()
	leaving, leave := context.WithCancel(ctx)
	second := b.subscribeAsync(leaving, "/topics/c/u")
	b.waiting()

	expect429(t, "a third, waiting", b.get("/topics/c/v"), refused)
	b.publish("/topics/c/w", "text/plain", "m")
	expect429(t, "a third, answered at once", b.get("/topics/c/w"), refused)
	// Publishes and cache operations are not subscriptions.
	b.expect("publish", b.publish("/topics/c/t", "text/plain", "for the first"), http.StatusNoContent, "")
	e := b.answer("first", <-first)
	b.expectEntries("first", e, textItem(0, e[0].Page, "for the first"))

	// The first was answered and the second leaves: both places are free.
	leave()
	<-second
	waitUntil(t, "both places free", func() bool { return b.h.state.limits.subscriptions.n.Load() == 0 })
	e = b.subscribe("/topics/c/w")
	b.expectEntries("a new subscriber", e, textItem(0, e[0].Page, "m"))
	if n := b.h.state.limits.throttled[limitSubscriptions].Load(); n != 2 {
		t.Errorf("%d subscribes counted as throttled, want 2", n)
	}
}

// TestLatency runs in a synctest bubble, whose clock moves only when every
// goroutine waits: the delays are measured exactly, and take no real time.
func TestLatency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const latency = 10 * time.Millisecond
		h, err := New(Handler{Latency: caddy.Duration(latency)})
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		serve := func(method, target, body string) (*httptest.ResponseRecorder, time.Duration) {
			req := httptest.NewRequest(method, target, strings.NewReader(body))
			if method == http.MethodPost {
				req.Header.Set("Content-Type", "text/plain")
			}
			rec := httptest.NewRecorder()
			start := time.Now()
			h.HTTPHandler().ServeHTTP(rec, req)
			return rec, time.Since(start)
		}
		for _, tc := range []struct {
			method, target, body string
			status               int
		}{
			{"PUT", "/cache/c?key=k&ttl_seconds=60", "v", http.StatusNoContent},
			{"GET", "/cache/c?key=k", "", http.StatusOK},
			{"GET", "/cache/c?key=nope", "", http.StatusNotFound},
			{"GET", "/cache/c", "", http.StatusBadRequest},
			{"POST", "/topics/c/t", "m", http.StatusNoContent},
			{"GET", "/topics/c/t", "", http.StatusOK},
		} {
			rec, took := serve(tc.method, tc.target, tc.body)
			if rec.Code != tc.status || took != latency {
				t.Errorf("%s %s: %d after %v, want %d after %v", tc.method, tc.target, rec.Code, took, tc.status, latency)
			}
		}
		if _, took := serve("GET", "/elsewhere", ""); took != 0 {
			t.Errorf("a path outside the API waited %v", took)
		}

		// A waiting subscriber receives a message the latency after it
		// was published.
		got := make(chan time.Time)
		go func() {
			rec, _ := serve("GET", "/topics/c/t?sequence_number=1", "")
			if rec.Code != http.StatusOK {
				t.Errorf("subscriber: %d", rec.Code)
			}
			got <- time.Now()
		}()
		time.Sleep(time.Hour)
		synctest.Wait()
		published := time.Now()
		if rec, _ := serve("POST", "/topics/c/t", "m2"); rec.Code != http.StatusNoContent {
			t.Fatalf("publish: %d", rec.Code)
		}
		if d := (<-got).Sub(published); d != latency {
			t.Errorf("the subscriber received the message %v after it was published, want %v", d, latency)
		}
	})
}

// TestSimulatedRegionThroughCaddy configures every simulated limit in a
// Caddyfile and checks, through a real Caddy, that each answers 429 past
// its bound, that answers come late, and that the metrics count it.
func TestSimulatedRegionThroughCaddy(t *testing.T) {
	cf, base := site(t, "\t\tname sim\n\t\tlatency 50ms\n\t\tmax_ops_per_second 1\n\t\tmax_publishes_per_second 1\n\t\tmax_subscriptions 1")
	c := startCaddy(t, cf)

	start := time.Now()
	c.expect("set", c.do("PUT", base+"/cache/c?key=k&ttl_seconds=60", strings.NewReader("v"), nil), 204, "")
	if took := time.Since(start); took < 50*time.Millisecond {
		t.Errorf("the set was answered after %v, before the 50ms latency", took)
	}
	// A bucket of one takes a second to refill.
	expect429(t, "second operation", c.do("GET", base+"/cache/c?key=k", nil, nil),
		`too many requests: momento_local "sim" allows 1 cache operations a second (max_ops_per_second)`)

	c.expect("publish", c.do("POST", base+"/topics/c/t", strings.NewReader("m"), nil), 204, "")
	expect429(t, "second publish", c.do("POST", base+"/topics/c/t", strings.NewReader("m"), nil),
		`too many requests: momento_local "sim" allows 1 publishes a second (max_publishes_per_second)`)

	waits := waitingOn(t, "sim")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = fetch(ctx, c.client, "GET", base+"/topics/c/t?sequence_number=1", nil, nil)
	}()
	await(t, "a subscriber waits", waits)
	expect429(t, "second subscription", c.do("GET", base+"/topics/c/t?sequence_number=0", nil, nil),
		`too many subscriptions: momento_local "sim" allows 1 at once (max_subscriptions)`)

	m := c.do("GET", base+"/metrics", nil, nil).body
	for _, tc := range []struct {
		sample string
		want   float64
	}{
		{`caddy_momento_local_throttled_total{limit="max_ops_per_second"}`, 1},
		{`caddy_momento_local_throttled_total{limit="max_publishes_per_second"}`, 1},
		{`caddy_momento_local_throttled_total{limit="max_subscriptions"}`, 1},
		{`caddy_momento_local_subscriptions`, 1},
	} {
		if got := metric(t, m, tc.sample); got != tc.want {
			t.Errorf("%s = %v, want %v", tc.sample, got, tc.want)
		}
	}
	cancel()
	<-done
}

func TestSimulationValidates(t *testing.T) {
	for _, tc := range []struct {
		cfg  Handler
		want string
	}{
		{Handler{Latency: caddy.Duration(-time.Millisecond)}, "latency must not be negative, got -1ms"},
		{Handler{MaxOpsPerSecond: -1}, "max_ops_per_second must be positive, or 0 (or unset) for no limit, got -1"},
		{Handler{MaxPublishesPerSecond: -2}, "max_publishes_per_second must be positive"},
		{Handler{MaxSubscriptions: -3}, "max_subscriptions must be positive"},
	} {
		if _, err := New(tc.cfg); err == nil || err.Error() != tc.want && !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%+v: got %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
