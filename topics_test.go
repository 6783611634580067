package momento

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// message is what a subscriber received: a sequence number and the value,
// binary values decoded.
type message struct {
	seq    uint64
	binary bool
	value  string
}

// subscriber long-polls a topic through the gateway the way Momento's
// clients do: next sequence_number = last + 1, sequence_page echoed.
type subscriber struct {
	g              *gateway
	path           string
	seq, page      uint64
	discontinuties int
}

func (s *subscriber) poll(ctx context.Context) ([]message, error) {
	target := fmt.Sprintf("%s%s?sequence_number=%d&sequence_page=%d", s.g.base, s.path, s.seq, s.page)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	resp, err := s.g.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("subscribe: %d %s", resp.StatusCode, body)
	}
	var page upstreamPage
	if err := json.Unmarshal(body, &page); err != nil {
		return nil, fmt.Errorf("subscribe answer %q: %v", body, err)
	}
	var out []message
	for _, it := range page.Items {
		switch {
		case it.Item != nil:
			m := message{seq: it.Item.TopicSequenceNumber}
			if it.Item.Value.Binary != nil {
				b, err := base64.StdEncoding.DecodeString(*it.Item.Value.Binary)
				if err != nil {
					return nil, err
				}
				m.binary, m.value = true, string(b)
			} else if it.Item.Value.Text != nil {
				m.value = *it.Item.Value.Text
			}
			out = append(out, m)
			s.seq, s.page = m.seq+1, it.Item.SequencePage
		case it.Discontinuity != nil:
			s.discontinuties++
			s.seq, s.page = it.Discontinuity.NewTopicSequence, it.Discontinuity.NewSequencePage
		}
	}
	return out, nil
}

func (g *gateway) publish(path, contentType, body string) response {
	return g.do(http.MethodPost, path, strings.NewReader(body), "Content-Type", contentType)
}

func topicsGateway(t *testing.T, extra string) (*gateway, *upstream, *momentolocal.Handler) {
	t.Helper()
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t", TopicBuffer: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	up := newUpstream(t, lh.HTTPHandler())
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+extra+"\t}")
	return g, up, lh
}

func TestTopicsTwoSubscribersAndAPublisher(t *testing.T) {
	g, _, _ := topicsGateway(t, "")
	const n = 40
	// What the publisher sends: text and binary, in order.
	sent := make([]message, n)
	for i := range sent {
		if i%3 == 0 {
			sent[i] = message{seq: uint64(i), binary: true, value: string([]byte{0, 0xff, byte(i), '\n'})}
		} else {
			sent[i] = message{seq: uint64(i), value: fmt.Sprintf("hello %d ✓", i)}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	received := make([][]message, 2)
	var counts [2]atomic.Int64 // messages received, readable while they poll
	errs := make([]error, 2)
	for s := 0; s < 2; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sub := &subscriber{g: g, path: "/topics/chat/room-1"}
			for len(received[s]) < n {
				msgs, err := sub.poll(ctx)
				if err != nil {
					errs[s] = err
					return
				}
				received[s] = append(received[s], msgs...)
				counts[s].Store(int64(len(received[s])))
			}
			if sub.discontinuties != 0 {
				errs[s] = fmt.Errorf("%d discontinuities for a subscriber that kept up", sub.discontinuties)
			}
		}()
	}
	// Publish in bursts of 4 while the subscribers long-poll. The backend
	// keeps the last 8 messages, so before each burst both subscribers must
	// have caught up to within one burst: then none falls behind.
	for i, m := range sent {
		ct := "text/plain; charset=utf-8"
		if m.binary {
			ct = "application/octet-stream"
		}
		expect(t, g.publish("/topics/chat/room-1", ct, m.value), http.StatusNoContent, "")
		if i%4 == 3 {
			waitFor(t, func() bool { return counts[0].Load() > int64(i-4) && counts[1].Load() > int64(i-4) })
		}
	}
	wg.Wait()
	for s := 0; s < 2; s++ {
		if errs[s] != nil {
			t.Fatalf("subscriber %d: %v", s, errs[s])
		}
		for i, m := range received[s] {
			if m != sent[i] {
				t.Fatalf("subscriber %d, message %d: got %+v, want %+v", s, i, m, sent[i])
			}
		}
	}
}

func TestSubscriberThatFallsBehindGetsADiscontinuity(t *testing.T) {
	g, _, _ := topicsGateway(t, "")
	for i := 0; i < 20; i++ { // the buffer holds 8
		expect(t, g.publish("/topics/c/news", "text/plain", fmt.Sprint(i)), http.StatusNoContent, "")
	}
	sub := &subscriber{g: g, path: "/topics/c/news"}
	msgs, err := sub.poll(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if sub.discontinuties != 1 || len(msgs) == 0 || msgs[0].seq != 12 || msgs[len(msgs)-1].seq != 19 {
		t.Fatalf("got %d discontinuities and %+v; want one discontinuity, then 12..19", sub.discontinuties, msgs)
	}
}

func TestTopicValidationAtTheEdge(t *testing.T) {
	g, up, _ := topicsGateway(t, "\t\tmax_message_size 16\n")
	// The refusals themselves are in call_test.go; here, two through a real
	// Caddy, and none reaches the region.
	expect(t, g.publish("/topics/c/", "text/plain", "hi"), 400, "topic name is missing")
	expect(t, g.publish("/topics/c/t", "text/plain", strings.Repeat("x", 17)), 413, "message of 17 bytes exceeds max_message_size (16 bytes)")
	// A chunked publish that passes the limit is cut off: nothing published.
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write(bytes.Repeat([]byte("y"), 64))
		pw.Close()
	}()
	expect(t, g.do(http.MethodPost, "/topics/c/t", pr, "Content-Type", "text/plain"), 413, "nothing was published")
	// Only the aborted chunked upload may have reached the region (it is
	// cut off mid-body, so the region may not even see its headers).
	if hits := up.hits.Load(); hits > 1 {
		t.Fatalf("refused requests reached the region: %d", hits)
	}
	// And the topic is empty: a subscriber from 0 waits (bounded here by
	// subscribe_timeout's sibling, the request context).
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if msgs, err := (&subscriber{g: g, path: "/topics/c/t"}).poll(ctx); err == nil {
		t.Fatalf("an aborted publish was delivered: %+v", msgs)
	}
}

func TestLongPollsDoNotTripTheBreaker(t *testing.T) {
	g, _, _ := topicsGateway(t, "\t\ttimeout 100ms\n\t\tsubscribe_timeout 250ms\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n")

	// A long poll held past `timeout` (but within subscribe_timeout) is
	// answered when the message arrives.
	got := make(chan []message, 1)
	go func() {
		msgs, err := (&subscriber{g: g, path: "/topics/c/slow"}).poll(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- msgs
	}()
	<-time.After(150 * time.Millisecond) // longer than timeout: the point of the test
	expect(t, g.publish("/topics/c/slow", "text/plain", "late"), http.StatusNoContent, "")
	if msgs := <-got; len(msgs) != 1 || msgs[0].value != "late" {
		t.Fatalf("long poll got %+v", msgs)
	}

	// A long poll that outlives subscribe_timeout gets an empty page.
	r := g.get("/topics/c/quiet?sequence_number=0")
	expect(t, r, http.StatusOK, `{"items":[]}`)

	// Neither opened the breaker (failures 1 would have).
	expect(t, g.put("/cache/c?key=k&ttl_seconds=5", "v"), http.StatusNoContent, "")
}

// When the last subscriber of a topic leaves, its hub ends after the
// linger, and with it the upstream subscription, which is counted as
// neither success nor failure; a subscriber that comes back within the
// linger finds the hub still there.
func TestHubEndsAfterTheLastSubscriberLeaves(t *testing.T) {
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	waiting := make(chan struct{}, 4)
	ended := make(chan struct{}, 4)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/topics/") {
			waiting <- struct{}{}
			defer func() { ended <- struct{}{} }()
		}
		lh.HTTPHandler().ServeHTTP(w, r)
	}))
	g := runCaddyfile(t, func(port int, logPath string) string {
		return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n\t\ttopics {\n\t\t\tlinger 300ms\n\t\t}\n\t}\n", 1) +
			fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n%s\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}\n}\n", port, regionBlock("r", up.URL, "t"))
	})
	subscribe := func() (leave func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = (&subscriber{g: g, path: "/topics/c/t"}).poll(ctx)
		}()
		return func() { cancel(); <-done }
	}

	leave := subscribe()
	<-waiting // the hub's upstream subscription
	leave()
	leave = subscribe() // within the linger: the same hub
	leave()
	<-ended // after the linger, the hub ends its upstream subscription
	if n := up.hits.Load(); n != 1 {
		t.Fatalf("the region saw %d subscriptions, want 1", n)
	}
	b := pooledBreaker(t, "r", up.URL)
	if c := b.counts(); c.TotalFailures != 0 || b.state() != gobreaker.StateClosed {
		t.Fatalf("the hub's end was counted against the region: %+v", c)
	}
	if n := pooledRegionState(t, "r", up.URL).subscriptions.Load(); n != 0 {
		t.Fatalf("%d upstream subscriptions still counted", n)
	}
}

func TestTopicPolicyAndPrefix(t *testing.T) {
	g, up, _ := topicsGateway(t, "\t\ttopic_prefix {http.request.header.X-User}-\n"+
		"\t\tallow {\n\t\t\tcaches chat-*\n\t\t\tops publish\n\t\t}\n")
	expect(t, g.do(http.MethodPost, "/topics/chat-1/inbox", strings.NewReader("hi"), "Content-Type", "text/plain", "X-User", "alice"), http.StatusNoContent, "")
	if got := up.lastURI.Load(); got != "/topics/chat-1/alice-inbox" {
		t.Fatalf("upstream saw %v", got)
	}
	hits := up.hits.Load()
	expect(t, g.get("/topics/chat-1/inbox"), http.StatusForbidden, "operation subscribe is not allowed here (allow ops: publish)")
	expect(t, g.do(http.MethodPost, "/topics/other/inbox", strings.NewReader("hi"), "Content-Type", "text/plain", "X-User", "alice"), http.StatusForbidden, `cache "other" is not allowed here`)
	expect(t, g.publish("/topics/chat-1/inbox", "text/plain", "anonymous"), http.StatusForbidden, "topic_prefix needs {http.request.header.X-User}")
	if up.hits.Load() != hits {
		t.Fatal("refused requests reached the region")
	}
}

// The hub's failing polls count against the region, and its waiters hear
// of it only when the region is down past their wait: until then the hub
// retries and they keep waiting.
func TestSubscribeFailuresCount(t *testing.T) {
	refused := refusedURL(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", refused, "t")+"\t\tsubscribe_timeout 30s\n\t\tbreaker {\n\t\t\tfailures 2\n\t\t\topen_for 1m\n\t\t}\n\t}")
	r := g.get("/topics/c/t")
	expect(t, r, http.StatusServiceUnavailable, "circuit breaker is open")
	if ra := r.header.Get("Retry-After"); ra != "60" && ra != "59" {
		t.Errorf("Retry-After %q", ra)
	}
	if c := pooledBreaker(t, "r", refused).counts(); c.ConsecutiveFailures != 0 || pooledBreaker(t, "r", refused).state() != gobreaker.StateOpen {
		t.Fatalf("the hub's failures did not open the breaker: %+v", c)
	}
	// While it is open, a new subscriber is told at once.
	expect(t, g.get("/topics/c/other"), http.StatusServiceUnavailable, "circuit breaker is open")
}

// TestIdleSubscriberCost measures what a client waiting on a topic costs
// the gateway: n raw connections (no goroutine of the test's per client)
// each send a long poll for one topic and wait; then each is answered a
// message and polls again, and waits. It reports goroutines, heap and
// stack per waiter both times, and holds the goroutine count: the
// request's own and net/http's background read, no goroutine of the
// gateway's own, none left behind by an answered poll (a count, not a
// time). The hub's upstream poll is one for all.
func TestIdleSubscriberCost(t *testing.T) {
	const n = 300
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("idle", up.URL, "t")+"\t}")
	// Start the hub, so its upstream poll is in the baseline.
	first := make(chan struct{})
	go func() {
		defer close(first)
		_, _ = (&subscriber{g: g, path: "/topics/idle/t"}).poll(context.Background())
	}()
	waitFor(t, func() bool { return up.hits.Load() == 1 })

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	g0, mem0 := runtime.NumGoroutine(), ms.HeapAlloc+ms.StackInuse
	conns := make([]net.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(c, "GET /topics/idle/t HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	measure := func(when string, waiting int) {
		t.Helper()
		waitFor(t, func() bool { return int(waiters.total.Load()) >= waiting })
		runtime.GC()
		runtime.ReadMemStats(&ms)
		perG := float64(runtime.NumGoroutine()-g0) / n
		perMem := float64(int64(ms.HeapAlloc+ms.StackInuse)-int64(mem0)) / n
		hubs, _ := pooledRegionState(t, "idle", up.URL).hubs.counts()
		t.Logf("per subscriber waiting on one topic, %s: %.2f goroutines, %.1f KiB of heap and stack; %d hub(s)", when, perG, perMem/1024, hubs)
		if perG > 2.2 {
			t.Errorf("%s, a waiting subscriber costs the gateway %.2f goroutines, want at most 2", when, perG)
		}
		if hubs != 1 {
			t.Errorf("%d subscribers of one topic: %d hubs, want 1", waiting, hubs)
		}
	}
	measure("on its first poll", n+1)
	if up.hits.Load() != 1 {
		t.Errorf("%d subscribers of one topic opened %d upstream subscriptions, want 1", n+1, up.hits.Load())
	}

	// Each is answered, and polls again after the message. (A connection
	// that has carried an answer costs more than a fresh one: its
	// goroutine's stack grew, through Caddy's handler chain, and stays.)
	expect(t, g.publish("/topics/idle/t", "text/plain", "wake up"), http.StatusNoContent, "")
	<-first
	for _, c := range conns {
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(resp.Body); resp.StatusCode != 200 || !strings.Contains(string(b), "wake up") {
			t.Fatalf("a waiting subscriber got %d %q", resp.StatusCode, b)
		}
		if _, err := io.WriteString(c, "GET /topics/idle/t?sequence_number=1 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
	}
	measure("polling again after an answer", n)
}
