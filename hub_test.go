package momento

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// hubGateway runs a gateway with the given global topics options in front
// of the embedded backend, behind upstream (which may fail on purpose).
func hubGateway(t *testing.T, topics string, wrap func(http.Handler) http.Handler, handlerExtra ...string) (*gateway, *upstream) {
	t.Helper()
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t", TopicBuffer: 64})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	var h http.Handler = lh.HTTPHandler()
	if wrap != nil {
		h = wrap(h)
	}
	up := newUpstream(t, h)
	g := runCaddyfile(t, func(port int, logPath string) string {
		return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n\t\ttopics {\n"+topics+"\t\t}\n\t}\n", 1) +
			fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n%s%s\t\tbreaker {\n\t\t\tfailures 100\n\t\t}\n\t}\n}\n", port, regionBlock("r", up.URL, "t"), strings.Join(handlerExtra, ""))
	})
	return g, up
}

// Many subscribers of one topic, long polls and event streams, share one
// upstream subscription: every one of them gets every message, while the
// region sees one long poll at a time.
func TestSubscribersShareOneUpstreamSubscription(t *testing.T) {
	var open, most atomic.Int64
	g, _ := hubGateway(t, "", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet {
				n := open.Add(1)
				for m := most.Load(); n > m && !most.CompareAndSwap(m, n); m = most.Load() {
				}
				defer open.Add(-1)
			}
			next.ServeHTTP(w, r)
		})
	})
	const polls, streams, msgs = 40, 5, 3
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	got := make([][]string, polls+streams)
	for i := range polls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := &subscriber{g: g, path: "/topics/c/shared"}
			for len(got[i]) < msgs {
				m, err := s.poll(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				for _, x := range m {
					got[i] = append(got[i], x.value)
				}
			}
		}()
	}
	for i := polls; i < polls+streams; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			es := openEvents(t, ctx, g, "/topics/c/shared", "")
			defer es.close()
			for len(got[i]) < msgs {
				ev := es.next(t)
				got[i] = append(got[i], ev.data)
			}
		}()
	}
	// Every subscriber waits (the polls at the gateway, one at the region).
	waitFor(t, func() bool { return int(waiters.total.Load()) == polls+streams })
	for i := range msgs {
		expect(t, g.publish("/topics/c/shared", "text/plain", fmt.Sprintf("m%d", i)), http.StatusNoContent, "")
	}
	wg.Wait()
	for i, g := range got {
		if strings.Join(g, ",") != "m0,m1,m2" {
			t.Fatalf("subscriber %d got %v", i, g)
		}
	}
	if m := most.Load(); m != 1 {
		t.Fatalf("%d subscribers held %d upstream long polls at once, want 1", polls+streams, m)
	}
}

// A cursor older than the hub's buffer gets a discontinuity, as Momento
// answers, then the messages kept.
func TestCursorBehindTheBufferGetsADiscontinuity(t *testing.T) {
	g, _ := hubGateway(t, "\t\t\tbuffer 3\n", nil)
	// A subscriber keeps the hub open while ten messages go by.
	es := openEvents(t, context.Background(), g, "/topics/c/t", "")
	defer es.close()
	waitFor(t, func() bool { return int(waiters.total.Load()) == 1 })
	for i := range 10 {
		expect(t, g.publish("/topics/c/t", "text/plain", fmt.Sprintf("m%d", i)), http.StatusNoContent, "")
	}
	// Once the stream has the last message, the hub has them all. (The
	// stream itself may fall behind a buffer this small, and get a
	// discontinuity on the way.)
	last := es.next(t)
	for last.data != "m9" {
		last = es.next(t)
	}
	page := strings.Split(last.id, "-")[0]
	r := g.get("/topics/c/t?sequence_number=2&sequence_page=" + page)
	want := `{"items":[{"discontinuity":{"last_topic_sequence":1,"new_topic_sequence":7,"new_sequence_page":` + page + `}},` +
		`{"item":{"topic_sequence_number":7,"sequence_page":` + page + `,"value":{"text":"m7"}}},` +
		`{"item":{"topic_sequence_number":8,"sequence_page":` + page + `,"value":{"text":"m8"}}},` +
		`{"item":{"topic_sequence_number":9,"sequence_page":` + page + `,"value":{"text":"m9"}}}]}`
	if r.status != 200 || r.body != want {
		t.Fatalf("got %d %s\nwant %s", r.status, r.body, want)
	}
	// A cursor within the buffer gets just what follows it.
	r = g.get("/topics/c/t?sequence_number=9&sequence_page=" + page)
	expect(t, r, 200, `{"items":[{"item":{"topic_sequence_number":9,`)
}

// The hub retries a failing region (5xx, 429, an answer broken off) while
// its subscribers wait, and they lose nothing.
func TestHubRetriesWithoutLosingMessages(t *testing.T) {
	var failures atomic.Int64
	g, _ := hubGateway(t, "", func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/topics/") {
				switch failures.Add(1) {
				case 1:
					w.WriteHeader(http.StatusInternalServerError)
					return
				case 2:
					w.Header().Set("Retry-After", "0")
					w.WriteHeader(http.StatusTooManyRequests)
					return
				case 3:
					// An answer broken off midway.
					w.Header().Set("Content-Length", "100")
					_, _ = io.WriteString(w, `{"items":[`)
					w.(http.Flusher).Flush()
					conn, _, _ := w.(http.Hijacker).Hijack()
					conn.Close()
					return
				}
			}
			next.ServeHTTP(w, r)
		})
	})
	got := make(chan []message, 1)
	go func() {
		m, err := (&subscriber{g: g, path: "/topics/c/t"}).poll(context.Background())
		if err != nil {
			t.Error(err)
		}
		got <- m
	}()
	// The hub has failed three times and waits at the region again.
	waitFor(t, func() bool { return failures.Load() >= 4 })
	expect(t, g.publish("/topics/c/t", "text/plain", "after the trouble"), http.StatusNoContent, "")
	if m := <-got; len(m) != 1 || m[0].value != "after the trouble" {
		t.Fatalf("the subscriber got %+v", m)
	}
	b := pooledBreaker(t, "r", g.regionEndpoint(t))
	if c := b.counts(); c.TotalFailures != 2 || b.state() != gobreaker.StateClosed {
		t.Fatalf("the hub's failures (a 500 and a broken answer, not the 429) counted %+v", c)
	}
}

// topic_prefix keeps users' topics apart: each has its own hub.
func TestHubsKeepPrefixedTopicsApart(t *testing.T) {
	g, _ := hubGateway(t, "", nil, "\t\ttopic_prefix {http.request.header.X-User}:\n")
	alice := openEventsAs(t, context.Background(), g, "/topics/c/inbox", "", "alice")
	defer alice.close()
	bob := openEventsAs(t, context.Background(), g, "/topics/c/inbox", "", "bob")
	defer bob.close()
	waitFor(t, func() bool { return int(waiters.total.Load()) == 2 })
	expect(t, g.do(http.MethodPost, "/topics/c/inbox", strings.NewReader("for bob"), "X-User", "bob"), http.StatusNoContent, "")
	expect(t, g.do(http.MethodPost, "/topics/c/inbox", strings.NewReader("for alice"), "X-User", "alice"), http.StatusNoContent, "")
	if ev := alice.next(t); ev.data != "for alice" {
		t.Fatalf("alice got %q", ev.data)
	}
	if ev := bob.next(t); ev.data != "for bob" {
		t.Fatalf("bob got %q", ev.data)
	}
}

// Server-Sent Events: one event per message, with an id of page and
// sequence number, text and binary, lines of a text as data lines,
// heartbeats while quiet, and resume with Last-Event-ID.
func TestServerSentEvents(t *testing.T) {
	g, _ := hubGateway(t, "\t\t\theartbeat 50ms\n\t\t\tbuffer 4\n", nil)
	ctx := context.Background()
	es := openEvents(t, ctx, g, "/topics/c/t", "")
	if ct := es.resp.Header.Get("Content-Type"); ct != "text/event-stream" || es.resp.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("headers %v", es.resp.Header)
	}
	if ev := es.nextRaw(t); ev.comment != " heartbeat" {
		t.Fatalf("a quiet stream sent %+v, want a heartbeat comment", ev)
	}
	expect(t, g.publish("/topics/c/t", "text/plain", "line one\nline two"), http.StatusNoContent, "")
	expect(t, g.publish("/topics/c/t", "application/octet-stream", "\x00\xff"), http.StatusNoContent, "")
	text, bin := es.next(t), es.next(t)
	page := strings.Split(text.id, "-")[0]
	if text.id != page+"-0" || text.event != "text" || text.data != "line one\nline two" {
		t.Fatalf("text event %+v", text)
	}
	if bin.id != page+"-1" || bin.event != "binary" || bin.data != "AP8=" {
		t.Fatalf("binary event %+v", bin)
	}
	es.close()

	// Reconnecting with Last-Event-ID continues right after that event.
	expect(t, g.publish("/topics/c/t", "text/plain", "while away"), http.StatusNoContent, "")
	es = openEvents(t, ctx, g, "/topics/c/t", bin.id)
	if ev := es.next(t); ev.id != page+"-2" || ev.data != "while away" {
		t.Fatalf("resumed with %+v", ev)
	}
	es.close()

	// A Last-Event-ID older than the buffer gets a discontinuity first.
	// (A stream watches the six messages reach the hub.)
	watch := openEvents(t, ctx, g, "/topics/c/t", page+"-2")
	defer watch.close()
	for i := range 6 {
		expect(t, g.publish("/topics/c/t", "text/plain", fmt.Sprintf("m%d", i)), http.StatusNoContent, "")
		watch.next(t)
	}
	es = openEvents(t, ctx, g, "/topics/c/t", text.id)
	defer es.close()
	if ev := es.next(t); ev.event != "discontinuity" || !strings.Contains(ev.data, `"last_topic_sequence":0,"new_topic_sequence":5`) {
		t.Fatalf("after a gap: %+v", ev)
	}
	if ev := es.next(t); ev.id != page+"-5" || ev.data != "m2" {
		t.Fatalf("after the discontinuity: %+v", ev)
	}
	expect(t, g.do(http.MethodGet, "/topics/c/t", nil, "Accept", "text/event-stream", "Last-Event-ID", "nonsense"), http.StatusBadRequest, "Last-Event-ID")
}

// A client that leaves mid-stream frees its place at once.
func TestEventStreamClientLeaving(t *testing.T) {
	g, _ := hubGateway(t, "\t\t\tlinger 10ms\n", nil)
	ctx, cancel := context.WithCancel(context.Background())
	es := openEvents(t, ctx, g, "/topics/c/t", "")
	waitFor(t, func() bool { return int(waiters.total.Load()) == 1 })
	cancel()
	es.close()
	waitFor(t, func() bool { return int(waiters.total.Load()) == 0 })
	rs := pooledRegionState(t, "r", g.regionEndpoint(t))
	waitFor(t, func() bool { return rs.subscriptions.Load() == 0 }) // the hub ended after its linger
}

// event is one Server-Sent Event, or a comment line.
type event struct{ id, event, data, comment string }

type eventStream struct {
	resp *http.Response
	br   *bufio.Reader
}

func openEvents(t *testing.T, ctx context.Context, g *gateway, path, lastID string) *eventStream {
	return openEventsAs(t, ctx, g, path, lastID, "")
}

func openEventsAs(t *testing.T, ctx context.Context, g *gateway, path, lastID, user string) *eventStream {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, g.base+path, nil)
	req.Header.Set("Accept", "text/event-stream")
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	if user != "" {
		req.Header.Set("X-User", user)
	}
	resp, err := (&http.Client{Transport: g.client.Transport}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("event stream: %d %s", resp.StatusCode, b)
	}
	// A test waiting for an event that never comes fails in a minute with
	// "event stream ended", rather than hanging until go test's timeout.
	guard := time.AfterFunc(time.Minute, func() { resp.Body.Close() })
	t.Cleanup(func() { guard.Stop() })
	return &eventStream{resp: resp, br: bufio.NewReader(resp.Body)}
}

func (es *eventStream) close() { es.resp.Body.Close() }

// nextRaw reads one event or comment.
func (es *eventStream) nextRaw(t *testing.T) event {
	t.Helper()
	var ev event
	var data []string
	for {
		line, err := es.br.ReadString('\n')
		if err != nil {
			t.Fatalf("event stream ended: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case line == "":
			ev.data = strings.Join(data, "\n")
			return ev
		case strings.HasPrefix(line, ":"):
			ev.comment = line[1:]
		case strings.HasPrefix(line, "id: "):
			ev.id = line[4:]
		case strings.HasPrefix(line, "event: "):
			ev.event = line[7:]
		case strings.HasPrefix(line, "data: "):
			data = append(data, line[6:])
		}
	}
}

// next reads the next event, skipping heartbeats.
func (es *eventStream) next(t *testing.T) event {
	t.Helper()
	for {
		if ev := es.nextRaw(t); ev.comment == "" {
			return ev
		}
	}
}

// regionEndpoint is the endpoint of the gateway's only region.
func (g *gateway) regionEndpoint(t *testing.T) string {
	t.Helper()
	rs := runningRegions()
	if len(rs) != 1 {
		t.Fatalf("%d regions", len(rs))
	}
	return rs[0].endpoint
}

// Operators see the hubs: in the metrics and the admin API.
func TestHubMetricsAndAdminAPI(t *testing.T) {
	up, _ := localUpstream(t, "t")
	og := startOpsGateway(t, "\tmomento {\n"+regionBlock("hub-ops", up.URL, "t")+"\t}")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streams := []*eventStream{openEvents(t, ctx, og.gateway, "/topics/c/a", ""), openEvents(t, ctx, og.gateway, "/topics/c/a", ""), openEvents(t, ctx, og.gateway, "/topics/c/b", "")}
	defer func() {
		for _, es := range streams {
			es.close()
		}
	}()
	waitFor(t, func() bool { return int(waiters.total.Load()) == 3 })
	r := og.regions(t)["hub-ops"]
	if r.TopicHubs != 2 || r.Subscriptions != 2 || r.TopicWaiters != 3 {
		t.Fatalf("admin API: %+v; want 2 hubs, 2 subscriptions, 3 waiters", r)
	}
	expect(t, og.publish("/topics/c/a", "text/plain", "x"), http.StatusNoContent, "")
	streams[0].next(t)
	streams[1].next(t)
	m := og.adminGet(t, "/metrics")
	for _, c := range []struct {
		name, labels string
		want         float64
	}{
		{"caddy_momento_topic_hubs", `region="hub-ops"`, 2},
		{"caddy_momento_upstream_subscriptions", `region="hub-ops"`, 2},
		{"caddy_momento_topic_waiting_clients", `kind="sse"`, 3},
		{"caddy_momento_topic_messages_fanned_out_total", `region="hub-ops"`, 2},
	} {
		if got := metric(m, c.name, c.labels); got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

// An answer written piece by piece through answerWriter (past
// answerBufSize: small pieces gathered, large ones as they are) arrives as
// the same bytes as one built whole, and is Momento's answer: one item per
// message, and the discontinuity. Bytes lost or reordered, or a
// Content-Length not theirs, would break the client's kept-alive
// connection.
func TestAnswersWrittenInPiecesAreWhole(t *testing.T) {
	var msgs []hubMessage
	for i := range 100 {
		text := strings.Repeat(fmt.Sprintf("%d ", i), 1+i*7) // from a few bytes to about 2 KiB
		m := hubMessage{seq: uint64(i), page: 7}
		m.item = fmt.Appendf(nil, `{"item":{"topic_sequence_number":%d,"sequence_page":7,"value":{"text":%s}}}`, i, jsonString(text))
		m.event = appendEvent(nil, 7, uint64(i), "text", text)
		msgs = append(msgs, m)
	}
	for _, ans := range []hubAnswer{
		{},
		{msgs: msgs[:1]},
		{msgs: msgs},
		{disc: &discontinuity{last: 3, newSeq: 9, newPage: 7}},
		{disc: &discontinuity{last: 3, newSeq: 9, newPage: 7}, msgs: msgs[9:]},
	} {
		whole := appendPieces(nil, ans.jsonPieces)
		var pieces strings.Builder
		aw := newAnswerWriter(&pieces)
		ans.jsonPieces(aw.put)
		if !aw.done() || pieces.String() != string(whole) || piecesLen(ans.jsonPieces) != len(whole) {
			t.Errorf("%d messages, discontinuity %v: written %d bytes, built %d, length %d", len(ans.msgs), ans.disc != nil, pieces.Len(), len(whole), piecesLen(ans.jsonPieces))
		}
		var page upstreamPage
		if err := json.Unmarshal(whole, &page); err != nil || len(page.Items) != len(ans.msgs)+map[bool]int{true: 1}[ans.disc != nil] {
			t.Errorf("%d messages: %v, %d items", len(ans.msgs), err, len(page.Items))
		}
		events := appendPieces(nil, ans.eventPieces)
		pieces.Reset()
		aw = newAnswerWriter(&pieces)
		ans.eventPieces(aw.put)
		if !aw.done() || pieces.String() != string(events) {
			t.Errorf("%d messages as events: written %d bytes, built %d", len(ans.msgs), pieces.Len(), len(events))
		}
	}
}
