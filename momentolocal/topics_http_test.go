package momentolocal

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// part is one element of a subscribe answer, flattened for comparison.
type part struct {
	Disc   bool
	Seq    uint64 // an item's topic_sequence_number, a discontinuity's new_topic_sequence
	Last   uint64 // a discontinuity's last_topic_sequence
	Page   uint64 // an item's sequence_page, a discontinuity's new_sequence_page
	Binary bool
	Value  string
}

func textItem(seq, page uint64, v string) part { return part{Seq: seq, Page: page, Value: v} }

func binaryItem(seq, page uint64, v string) part {
	return part{Seq: seq, Page: page, Binary: true, Value: v}
}

func gap(last, next, page uint64) part { return part{Disc: true, Last: last, Seq: next, Page: page} }

// decodeAnswer decodes a subscribe answer strictly: Momento's fields, all
// present, nothing else.
func decodeAnswer(body string) ([]part, error) {
	var wire struct {
		Items *[]struct {
			Item *struct {
				Seq   *uint64 `json:"topic_sequence_number"`
				Page  *uint64 `json:"sequence_page"`
				Value *struct {
					Text   *string `json:"text"`
					Binary *string `json:"binary"`
				} `json:"value"`
			} `json:"item"`
			Discontinuity *struct {
				Last *uint64 `json:"last_topic_sequence"`
				New  *uint64 `json:"new_topic_sequence"`
				Page *uint64 `json:"new_sequence_page"`
			} `json:"discontinuity"`
		} `json:"items"`
	}
	dec := json.NewDecoder(strings.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&wire); err != nil {
		return nil, fmt.Errorf("answer %q: %v", body, err)
	}
	if dec.More() || wire.Items == nil {
		return nil, fmt.Errorf("answer %q: not one object with items", body)
	}
	entries := []part{}
	for _, it := range *wire.Items {
		switch {
		case it.Item != nil && it.Discontinuity == nil:
			i := it.Item
			if i.Seq == nil || i.Page == nil || i.Value == nil || (i.Value.Text == nil) == (i.Value.Binary == nil) {
				return nil, fmt.Errorf("answer %q: incomplete item", body)
			}
			e := part{Seq: *i.Seq, Page: *i.Page}
			if i.Value.Text != nil {
				e.Value = *i.Value.Text
			} else {
				b, err := base64.StdEncoding.Strict().DecodeString(*i.Value.Binary)
				if err != nil {
					return nil, fmt.Errorf("answer %q: binary value: %v", body, err)
				}
				e.Binary, e.Value = true, string(b)
			}
			entries = append(entries, e)
		case it.Discontinuity != nil && it.Item == nil:
			d := it.Discontinuity
			if d.Last == nil || d.New == nil || d.Page == nil {
				return nil, fmt.Errorf("answer %q: incomplete discontinuity", body)
			}
			entries = append(entries, gap(*d.Last, *d.New, *d.Page))
		default:
			return nil, fmt.Errorf("answer %q: an part must be one item or one discontinuity", body)
		}
	}
	return entries, nil
}

// fetch sends one request; it may run outside the test's goroutine.
func fetch(ctx context.Context, client *http.Client, method, url string, body io.Reader, header map[string]string) (response, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return response{}, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, body: string(data), header: resp.Header}, err
}

func (b *backend) publish(path, contentType, body string) response {
	b.t.Helper()
	var header map[string]string
	if contentType != "" {
		header = map[string]string{"Content-Type": contentType}
	}
	return b.do(http.MethodPost, path, strings.NewReader(body), header)
}

// subscribe subscribes, expects an immediate answer and decodes it.
func (b *backend) subscribe(target string) []part {
	b.t.Helper()
	return b.answer(target, b.get(target))
}

func (b *backend) answer(what string, r response) []part {
	b.t.Helper()
	if r.status != http.StatusOK {
		b.t.Fatalf("%s: got %d %q, want 200", what, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		b.t.Fatalf("%s: Content-Type %q", what, ct)
	}
	entries, err := decodeAnswer(r.body)
	if err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
	return entries
}

// subscribeAsync subscribes in a goroutine; the answer arrives on the
// returned channel.
func (b *backend) subscribeAsync(ctx context.Context, target string) <-chan response {
	got := make(chan response, 1)
	go func() {
		r, err := fetch(ctx, b.srv.Client(), http.MethodGet, b.srv.URL+target, nil, nil)
		if err != nil {
			r.body = err.Error()
		}
		got <- r
	}()
	return got
}

// waiting blocks until a subscriber has started to wait.
func (b *backend) waiting() {
	b.t.Helper()
	select {
	case <-b.waits:
	case <-time.After(10 * time.Second):
		b.t.Fatal("no subscriber started waiting")
	}
}

func (b *backend) expectEntries(what string, got []part, want ...part) {
	b.t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		b.t.Errorf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// page returns the sequence page of a topic, from a subscribe.
func (b *backend) page(path string) uint64 {
	b.t.Helper()
	entries := b.subscribe(path + "?sequence_number=0")
	if len(entries) == 0 {
		b.t.Fatalf("%s: no items", path)
	}
	return entries[len(entries)-1].Page
}

func TestPublishSubscribe(t *testing.T) {
	b := newBackend(t, Handler{})
	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}

	b.expect("text", b.publish("/topics/c/t", "text/plain", "hi"), http.StatusNoContent, "")
	b.expect("binary", b.publish("/topics/c/t", "application/octet-stream", string(every)), http.StatusNoContent, "")

	r := b.get("/topics/c/t?sequence_number=0&sequence_page=0")
	page := uint64(b.clock.Now().Unix())
	want := fmt.Sprintf(`{"items":[{"item":{"topic_sequence_number":0,"sequence_page":%d,"value":{"text":"hi"}}},`+
		`{"item":{"topic_sequence_number":1,"sequence_page":%d,"value":{"binary":"%s"}}}]}`,
		page, page, base64.StdEncoding.EncodeToString(every))
	b.expect("subscribe from 0", r, http.StatusOK, want)
	b.expectEntries("decoded", b.answer("subscribe from 0", r),
		textItem(0, page, "hi"), binaryItem(1, page, string(every)))
	if cl := r.header.Get("Content-Length"); cl != fmt.Sprint(len(want)) {
		t.Errorf("Content-Length %q, want %d", cl, len(want))
	}

	// Text that JSON must escape, and parameters and case in Content-Type.
	tricky := "quote \" backslash \\ newline \n tab \t nul \x00 del \x7f <b>&amp; é ✓ 🙂 \u2028"
	for _, ct := range []string{"text/plain; charset=utf-8", "Text/Plain;Charset=UTF-8", "text/plain; charset=us-ascii; format=flowed"} {
		b.expect(ct, b.publish("/topics/c/t", ct, tricky), http.StatusNoContent, "")
	}
	b.expect("empty binary", b.publish("/topics/c/t", "application/octet-stream", ""), http.StatusNoContent, "")
	b.expect("empty text", b.publish("/topics/c/t", "text/plain", ""), http.StatusNoContent, "")
	b.expectEntries("from 2", b.subscribe("/topics/c/t?sequence_number=2"),
		textItem(2, page, tricky), textItem(3, page, tricky), textItem(4, page, tricky),
		binaryItem(5, page, ""), textItem(6, page, ""))
	b.expectEntries("from 6, no page given", b.subscribe("/topics/c/t?sequence_number=6"), textItem(6, page, ""))
	b.expectEntries("from 6 with the page", b.subscribe(fmt.Sprintf("/topics/c/t?sequence_page=%d&sequence_number=6", page)), textItem(6, page, ""))
	b.expectEntries("no parameters: from 0", b.subscribe("/topics/c/t")[:1], textItem(0, page, "hi"))
	checkTopics(t, b.h.state.topics)
}

// TestPublishContentTypes checks that only application/octet-stream
// publishes binary: every other type, as Momento's own curl -d examples
// and its JSON-publishing demo send, and none at all, publishes text.
func TestPublishContentTypes(t *testing.T) {
	b := newBackend(t, Handler{})
	var want []part
	for _, tc := range []struct {
		contentType string // "" sends none
		binary      bool
	}{
		{"application/octet-stream", true},
		{"Application/Octet-Stream ; x=y", true},
		{"text/plain", false},
		{"text/plain; charset=utf-8", false},
		{"text/plain; charset=iso-8859-1", false},    // the body must still be UTF-8
		{"application/x-www-form-urlencoded", false}, // curl -d
		{"application/json", false},
		{"text/html", false},
		{"text/plain; charset", false}, // malformed parameter
		{"", false},
	} {
		body := "é " + tc.contentType
		b.expect(tc.contentType, b.publish("/topics/c/t", tc.contentType, body), http.StatusNoContent, "")
		want = append(want, part{Seq: uint64(len(want)), Binary: tc.binary, Value: body})
	}
	got := b.subscribe("/topics/c/t")
	for i := range got {
		got[i].Page = 0
	}
	b.expectEntries("stored as", got, want...)
}

func TestSequenceNumbersAndPages(t *testing.T) {
	b := newBackend(t, Handler{})
	for i := range 5 {
		b.publish("/topics/c/t", "text/plain", fmt.Sprint(i))
	}
	entries := b.subscribe("/topics/c/t?sequence_number=0")
	page := entries[0].Page
	if page == 0 {
		t.Fatal("sequence_page is 0")
	}
	for i, e := range entries {
		if e != textItem(uint64(i), page, fmt.Sprint(i)) {
			t.Errorf("part %d: %+v", i, e)
		}
	}
	b.expectEntries("from 3", b.subscribe("/topics/c/t?sequence_number=3"), textItem(3, page, "3"), textItem(4, page, "4"))

	// Another topic, and the same topic name in another cache, are topics
	// of their own: numbered from 0, with pages of their own.
	b.publish("/topics/c/u", "text/plain", "u0")
	b.publish("/topics/d/t", "text/plain", "d0")
	pages := map[uint64]bool{page: true}
	for _, path := range []string{"/topics/c/u", "/topics/d/t"} {
		e := b.subscribe(path)
		if len(e) != 1 || e[0].Seq != 0 || e[0].Page == 0 || pages[e[0].Page] {
			t.Errorf("%s: %+v; want one item numbered 0 on a new page (pages so far %v)", path, e, pages)
		}
		pages[e[0].Page] = true
	}
	if b.page("/topics/c/t") != page {
		t.Error("the page of a topic changed")
	}
}

func TestSubscribeWaitsForPublish(t *testing.T) {
	b := newBackend(t, Handler{})
	got := b.subscribeAsync(context.Background(), "/topics/c/t?sequence_number=0")
	b.waiting()
	select {
	case r := <-got:
		t.Fatalf("answered before anything was published: %d %q", r.status, r.body)
	default:
	}
	b.expect("publish", b.publish("/topics/c/t", "text/plain", "wake up"), http.StatusNoContent, "")
	entries := b.answer("woken subscriber", <-got)
	b.expectEntries("woken subscriber", entries, textItem(0, entries[0].Page, "wake up"))

	// Asking for the next message waits too, and only for that one.
	got = b.subscribeAsync(context.Background(), fmt.Sprintf("/topics/c/t?sequence_number=1&sequence_page=%d", entries[0].Page))
	b.waiting()
	b.publish("/topics/c/other", "text/plain", "elsewhere")
	b.publish("/topics/d/t", "text/plain", "elsewhere")
	b.publish("/topics/c/t", "application/octet-stream", "\x00\x01")
	b.expectEntries("second", b.answer("second", <-got), binaryItem(1, entries[0].Page, "\x00\x01"))
}

func TestSubscribersReceiveEveryMessageInOrder(t *testing.T) {
	b := newBackend(t, Handler{})
	const n = 60
	sent := make([]part, n)
	for i := range sent {
		sent[i] = part{Seq: uint64(i), Value: fmt.Sprintf("message %d ✓", i)}
		if i%3 == 0 {
			sent[i] = part{Seq: uint64(i), Binary: true, Value: string([]byte{0, 0xff, byte(i)})}
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const subscribers = 3
	received := make([][]part, subscribers)
	errs := make(chan error, subscribers)
	var wg sync.WaitGroup
	for s := range subscribers {
		wg.Go(func() {
			client := &http.Client{Transport: &http.Transport{}}
			defer client.CloseIdleConnections()
			var seq, page uint64
			for len(received[s]) < n {
				r, err := fetch(ctx, client, http.MethodGet, fmt.Sprintf("%s/topics/c/t?sequence_number=%d&sequence_page=%d", b.srv.URL, seq, page), nil, nil)
				if err != nil || r.status != http.StatusOK {
					errs <- fmt.Errorf("subscriber %d: %d %q %v", s, r.status, r.body, err)
					return
				}
				entries, err := decodeAnswer(r.body)
				if err != nil || len(entries) == 0 {
					errs <- fmt.Errorf("subscriber %d: %d entries, %v", s, len(entries), err)
					return
				}
				for _, e := range entries {
					if e.Disc || (page != 0 && e.Page != page) {
						errs <- fmt.Errorf("subscriber %d: unexpected %+v (page %d)", s, e, page)
						return
					}
					seq, page = e.Seq+1, e.Page
					e.Page = 0
					received[s] = append(received[s], e)
				}
			}
		})
	}
	for _, m := range sent {
		ct := "text/plain; charset=utf-8"
		if m.Binary {
			ct = "application/octet-stream"
		}
		b.expect("publish", b.publish("/topics/c/t", ct, m.Value), http.StatusNoContent, "")
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for s := range subscribers {
		if fmt.Sprint(received[s]) != fmt.Sprint(sent) {
			t.Errorf("subscriber %d received\n%+v\nwant\n%+v", s, received[s], sent)
		}
	}
	checkTopics(t, b.h.state.topics)
}

func TestDiscontinuityForDroppedMessages(t *testing.T) {
	b := newBackend(t, Handler{TopicBuffer: 3})
	for i := range 5 {
		b.publish("/topics/c/t", "text/plain", fmt.Sprint(i))
	}
	p := b.page("/topics/c/t")
	kept := []part{textItem(2, p, "2"), textItem(3, p, "3"), textItem(4, p, "4")}

	b.expectEntries("from 1", b.subscribe("/topics/c/t?sequence_number=1"), append([]part{gap(0, 2, p)}, kept...)...)
	b.expectEntries("from 0", b.subscribe("/topics/c/t?sequence_number=0&sequence_page=0"), append([]part{gap(0, 2, p)}, kept...)...)
	b.expectEntries("from 2", b.subscribe("/topics/c/t?sequence_number=2"), kept...)
	b.expectEntries("from 3", b.subscribe(fmt.Sprintf("/topics/c/t?sequence_number=3&sequence_page=%d", p)), kept[1:]...)
	checkTopics(t, b.h.state.topics)
}

func TestDiscontinuityForClientAhead(t *testing.T) {
	b := newBackend(t, Handler{})
	b.publish("/topics/c/t", "text/plain", "a")
	b.publish("/topics/c/t", "text/plain", "b")
	p := b.page("/topics/c/t")

	b.expectEntries("from 5", b.subscribe(fmt.Sprintf("/topics/c/t?sequence_number=5&sequence_page=%d", p)), gap(4, 2, p))
	b.expectEntries("from 3, no page", b.subscribe("/topics/c/t?sequence_number=3"), gap(2, 2, p))

	// At the next number, it waits.
	ctx, cancel := context.WithCancel(context.Background())
	got := b.subscribeAsync(ctx, "/topics/c/t?sequence_number=2")
	b.waiting()
	cancel()
	<-got

	// A topic nobody published to yet: ahead of 0.
	b.expectEntries("new topic", b.subscribe("/topics/c/new?sequence_number=7"), gap(6, 0, uint64(b.clock.Now().Unix())+1))
	checkTopics(t, b.h.state.topics)
	if n := b.h.state.topics.count(); n != 1 {
		t.Errorf("%d topics kept, want 1: one with no messages and no subscribers is forgotten", n)
	}
}

func TestDiscontinuityForOtherPage(t *testing.T) {
	b := newBackend(t, Handler{TopicBuffer: 2})
	b.publish("/topics/c/t", "text/plain", "a")
	b.publish("/topics/c/t", "text/plain", "b")
	p := b.page("/topics/c/t")

	b.expectEntries("other page", b.subscribe(fmt.Sprintf("/topics/c/t?sequence_number=1&sequence_page=%d", p+1000)),
		gap(0, 0, p), textItem(0, p, "a"), textItem(1, p, "b"))
	b.expectEntries("other page, from 0", b.subscribe("/topics/c/t?sequence_number=0&sequence_page=1"),
		gap(0, 0, p), textItem(0, p, "a"), textItem(1, p, "b"))
	b.publish("/topics/c/t", "text/plain", "c") // drops a
	b.expectEntries("other page, ahead of the topic", b.subscribe("/topics/c/t?sequence_number=9&sequence_page=1"),
		gap(8, 1, p), textItem(1, p, "b"), textItem(2, p, "c"))

	// A topic that holds nothing (as after a restart): the discontinuity
	// comes with the next message, which the subscriber waits for.
	got := b.subscribeAsync(context.Background(), "/topics/c/restarted?sequence_number=3&sequence_page=12345")
	b.waiting()
	select {
	case r := <-got:
		t.Fatalf("answered before anything was published: %d %q", r.status, r.body)
	default:
	}
	b.publish("/topics/c/restarted", "text/plain", "first")
	entries := b.answer("restarted", <-got)
	np := entries[0].Page
	b.expectEntries("restarted", entries, gap(2, 0, np), textItem(0, np, "first"))
	if np == p || np == 12345 || np == 0 {
		t.Errorf("new topic's page %d", np)
	}
}

func TestSubscribeAnswerIsBounded(t *testing.T) {
	b := newBackend(t, Handler{})
	for i := range maxSubscribeItems + 50 {
		b.publish("/topics/c/t", "text/plain", fmt.Sprint(i))
	}
	first := b.subscribe("/topics/c/t")
	if len(first) != maxSubscribeItems || first[0].Seq != 0 || first[len(first)-1].Seq != maxSubscribeItems-1 {
		t.Fatalf("first answer: %d items, %+v ... %+v", len(first), first[0], first[len(first)-1])
	}
	rest := b.subscribe(fmt.Sprintf("/topics/c/t?sequence_number=%d", maxSubscribeItems))
	if len(rest) != 50 || rest[0].Seq != maxSubscribeItems || rest[49].Value != fmt.Sprint(maxSubscribeItems+49) {
		t.Fatalf("second answer: %d items", len(rest))
	}
}

func TestTopicBadRequests(t *testing.T) {
	b := newBackend(t, Handler{})
	for _, tc := range []struct {
		method, target, contentType, body string
		want                              string
	}{
		{"GET", "/topics/c/t?sequence_number=-1", "", "", "sequence_number must be a whole number"},
		{"GET", "/topics/c/t?sequence_number=abc", "", "", "sequence_number must be a whole number"},
		{"GET", "/topics/c/t?sequence_number=1.5", "", "", "sequence_number must be a whole number"},
		{"GET", "/topics/c/t?sequence_number=", "", "", "sequence_number must be a whole number"},
		{"GET", "/topics/c/t?sequence_number=%2B1", "", "", "sequence_number must be a whole number"},
		{"GET", "/topics/c/t?sequence_number=18446744073709551616", "", "", "sequence_number must be a whole number"},
		{"GET", "/topics/c/t?sequence_page=-1", "", "", "sequence_page must be a whole number"},
		{"GET", "/topics/c/t?sequence_page=x", "", "", "sequence_page must be a whole number"},
		{"GET", "/topics/c/t?sequence_number=1&sequence_number=2", "", "", "sequence_number is given more than once"},
		{"GET", "/topics/c/t?sequence_page=1&sequence_page=1", "", "", "sequence_page is given more than once"},
		{"GET", "/topics/c/t?sequence_number=%zz", "", "", "malformed query"},
		{"POST", "/topics/c/t", "text/plain", "\xff\xfe", "a text message must be valid UTF-8"},
		{"POST", "/topics/c/t", "", "caf\xe9", "a text message must be valid UTF-8"},
		{"POST", "/topics/c/t", "application/json", "\x00\xff", "publish other bytes as application/octet-stream"},
		{"POST", "/topics/c", "text/plain", "hi", "missing topic name: use /topics/{cacheName}/{topicName}"},
		{"GET", "/topics/c", "", "", "missing topic name"},
		{"GET", "/topics/", "", "", "invalid cache name: cache name is empty"},
		{"GET", "/topics//t", "", "", "invalid cache name: cache name is empty"},
		{"GET", "/topics/c/", "", "", "invalid topic name: topic name is empty"},
		{"GET", "/topics/c/a/b", "", "", "topic name must not contain '/'"},
		{"POST", "/topics/c/a%2Fb", "text/plain", "hi", "topic name must not contain '/'"},
		{"GET", "/topics/c/..", "", "", "topic name must not contain '..'"},
		{"GET", "/topics/c/a%0Ab", "", "", "topic name must not contain control characters"},
		{"GET", "/topics/c..d/t", "", "", "cache name must not contain '..'"},
	} {
		t.Run(tc.method+" "+tc.target+" "+tc.contentType, func(t *testing.T) {
			header := map[string]string{}
			if tc.contentType != "" {
				header["Content-Type"] = tc.contentType
			}
			r := b.do(tc.method, tc.target, strings.NewReader(tc.body), header)
			if r.status != http.StatusBadRequest || !strings.Contains(r.body, tc.want) {
				t.Errorf("got %d %q, want 400 containing %q", r.status, r.body, tc.want)
			}
		})
	}
	if n := b.h.state.topics.count(); n != 0 || b.h.state.topics.memory.Load() != 0 {
		t.Errorf("bad requests left %d topics, %d bytes", n, b.h.state.topics.memory.Load())
	}
}

func TestPublishTooLarge(t *testing.T) {
	b := newBackend(t, Handler{MaxMessageSize: 8})
	for name, body := range map[string]io.Reader{
		"with length": strings.NewReader("123456789"),
		"chunked":     struct{ io.Reader }{strings.NewReader("123456789")},
		"much larger": struct{ io.Reader }{bytes.NewReader(make([]byte, 1<<20))},
	} {
		r := b.do(http.MethodPost, "/topics/c/t", body, map[string]string{"Content-Type": "application/octet-stream"})
		if r.status != http.StatusRequestEntityTooLarge || !strings.Contains(r.body, "max_message_size (8 bytes)") {
			t.Errorf("%s: got %d %q, want 413 naming max_message_size", name, r.status, r.body)
		}
	}
	b.expect("fits", b.publish("/topics/c/t", "text/plain", "12345678"), http.StatusNoContent, "")
	e := b.subscribe("/topics/c/t")
	b.expectEntries("only what fits was published", e, textItem(0, e[0].Page, "12345678"))

	// A message that alone would exceed max_memory cannot be kept.
	small := newBackend(t, Handler{MaxItemSize: 100, MaxMemory: 1000})
	r := small.publish("/topics/c/t", "text/plain", strings.Repeat("x", 900))
	if r.status != http.StatusRequestEntityTooLarge || !strings.Contains(r.body, "max_memory (1000 bytes)") {
		t.Errorf("message larger than memory: got %d %q", r.status, r.body)
	}
	if small.h.state.topics.memory.Load() != 0 {
		t.Error("a refused message was kept")
	}
}

// A publish whose body ends early must publish nothing.
func TestAbortedPublishPublishesNothing(t *testing.T) {
	b := newBackend(t, Handler{})
	srv, handled := b.signallingServer()
	for _, request := range []string{
		"Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n5\r\nab",
		"Transfer-Encoding: chunked\r\n\r\n",
		"Content-Length: 100\r\n\r\n0123456789",
	} {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(conn, "POST /topics/c/t HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n%s", request)
		conn.Close()
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatal("the server did not finish handling the aborted publish")
		}
	}
	b.publish("/topics/c/t", "text/plain", "whole")
	e := b.subscribe("/topics/c/t")
	b.expectEntries("after aborted publishes", e, textItem(0, e[0].Page, "whole"))
}

func TestTopicAuthAndCaches(t *testing.T) {
	const token = "s3cret-token"
	b := newBackend(t, Handler{Token: token, Caches: []string{"c"}})
	text := map[string]string{"Content-Type": "text/plain"}
	with := func(h map[string]string, k, v string) map[string]string {
		out := map[string]string{k: v}
		for k, v := range h {
			out[k] = v
		}
		return out
	}
	for _, tc := range []struct {
		name, method, target string
		header               map[string]string
		status               int
		body                 string
	}{
		{"publish, no token", "POST", "/topics/c/t", text, 401, "-"},
		{"publish, wrong token", "POST", "/topics/c/t", with(text, "Authorization", "wrong-token"), 401, "invalid token"},
		{"publish, both", "POST", "/topics/c/t?token=" + token, with(text, "Authorization", token), 400, "-"},
		{"subscribe, no token", "GET", "/topics/c/t", nil, 401, "-"},
		{"subscribe, wrong param", "GET", "/topics/c/t?token=wrong-token", nil, 401, "invalid token"},
		{"publish, unknown cache", "POST", "/topics/x/t?token=" + token, text, 404, "Cache Not Found"},
		{"subscribe, unknown cache", "GET", "/topics/x/t", map[string]string{"Authorization": token}, 404, "Cache Not Found"},
		{"publish, header", "POST", "/topics/c/t", with(text, "Authorization", token), 204, ""},
		{"publish, param", "POST", "/topics/c/t?token=" + token, text, 204, ""},
	} {
		r := b.do(tc.method, tc.target, strings.NewReader("m"), tc.header)
		b.expect(tc.name, r, tc.status, tc.body)
		if strings.Contains(r.body, token) || strings.Contains(r.body, "wrong-token") {
			t.Errorf("%s: response echoes a token: %q", tc.name, r.body)
		}
	}
	r := b.do(http.MethodGet, "/topics/c/t?token="+token, nil, nil)
	e := b.answer("subscribe with token", r)
	b.expectEntries("subscribe with token", e, textItem(0, e[0].Page, "m"), textItem(1, e[0].Page, "m"))
}

func TestTopicMethodNotAllowed(t *testing.T) {
	b := newBackend(t, Handler{})
	for _, method := range []string{http.MethodPut, http.MethodDelete, http.MethodHead, http.MethodPatch, http.MethodOptions} {
		r := b.do(method, "/topics/c/t", nil, nil)
		if r.status != http.StatusMethodNotAllowed {
			t.Errorf("%s: status %d, want 405", method, r.status)
		}
		if allow := r.header.Get("Allow"); allow != "GET, POST" {
			t.Errorf("%s: Allow = %q", method, allow)
		}
	}
}

// waitUntil polls cond until it holds or a deadline passes.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestSubscriberDisconnectFreesHandler(t *testing.T) {
	b := newBackend(t, Handler{})
	srv, handled := b.signallingServer()
	client := &http.Client{Transport: &http.Transport{}}
	baseline := runtime.NumGoroutine()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := fetch(ctx, client, http.MethodGet, srv.URL+"/topics/c/t", nil, nil)
		done <- err
	}()
	b.waiting()
	if n := b.h.state.topics.count(); n != 1 {
		t.Fatalf("%d topics while a subscriber waits, want 1", n)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("client: %v", err)
	}
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("the handler did not return when its client went away")
	}
	if n, m := b.h.state.topics.count(), b.h.state.topics.memory.Load(); n != 0 || m != 0 {
		t.Errorf("after the subscriber left: %d topics, %d bytes; want none", n, m)
	}
	client.CloseIdleConnections()
	waitUntil(t, "goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= baseline })
}

func TestCloseReleasesSubscribers(t *testing.T) {
	b := newBackend(t, Handler{})
	got := b.subscribeAsync(context.Background(), "/topics/c/t")
	b.waiting()
	if err := b.h.Close(); err != nil {
		t.Fatal(err)
	}
	b.expect("waiting subscriber", <-got, http.StatusOK, `{"items":[]}`)
	b.expect("later subscriber", b.get("/topics/c/t"), http.StatusOK, `{"items":[]}`)
	// What has an answer is still answered.
	b.expect("publish after close", b.publish("/topics/c/t", "text/plain", "late"), http.StatusNoContent, "")
	e := b.subscribe("/topics/c/t")
	b.expectEntries("subscribe after close", e, textItem(0, e[0].Page, "late"))
}

// TestTopicMemory checks that messages and items share max_memory, the
// oldest of either going first.
func TestTopicMemory(t *testing.T) {
	const (
		itemCost  = 2 + 96 + itemOverhead // key "k0" and a 96-byte value, 96 being a size class
		msgCost   = 24 + messageOverhead  // {"text":"0123456789"}: 21 bytes in a 24-byte size class
		topicCost = len("c") + len("t") + topicOverhead
	)
	b := newBackend(t, Handler{MaxItemSize: 100, MaxMemory: int64(itemCost + topicCost + 3*msgCost)})
	value := strings.Repeat("v", 96)
	publish := func() {
		t.Helper()
		b.expect("publish", b.publish("/topics/c/t", "text/plain", "0123456789"), http.StatusNoContent, "")
	}

	b.put("/cache/c?key=k0&ttl_seconds=60", value)
	publish()
	publish()
	publish() // exactly at the bound
	if b.h.Len() != 1 || b.h.state.store.memory() != b.h.state.store.maxBytes.Load() {
		t.Fatalf("at the bound: Len %d, memory %d of %d", b.h.Len(), b.h.state.store.memory(), b.h.state.store.maxBytes.Load())
	}
	publish() // evicts k0, older than every message
	b.expect("k0 evicted", b.get("/cache/c?key=k0"), http.StatusNotFound, "Key Not Found")
	b.put("/cache/c?key=k1&ttl_seconds=60", value) // drops message 0
	b.expect("k1 kept", b.get("/cache/c?key=k1"), http.StatusOK, value)
	e := b.subscribe("/topics/c/t")
	p := e[0].Page
	b.expectEntries("after eviction", e, gap(0, 1, p),
		textItem(1, p, "0123456789"), textItem(2, p, "0123456789"), textItem(3, p, "0123456789"))
	checkTopics(t, b.h.state.topics)
	checkInvariants(t, b.h.state.store)

	// Items can push out a whole topic, which is then forgotten: its next
	// subscriber finds a new page.
	for i := range 4 {
		b.put(fmt.Sprintf("/cache/c?key=j%d&ttl_seconds=60", i), value)
	}
	if n, m := b.h.state.topics.count(), b.h.state.topics.memory.Load(); n != 0 || m != 0 {
		t.Errorf("topics left: %d, %d bytes", n, m)
	}
	checkInvariants(t, b.h.state.store)
	got := b.subscribeAsync(context.Background(), fmt.Sprintf("/topics/c/t?sequence_number=4&sequence_page=%d", p))
	b.waiting()
	publish()
	e = b.answer("recreated topic", <-got)
	if len(e) != 2 || e[0] != gap(3, 0, e[0].Page) || e[0].Page == p || e[1].Seq != 0 {
		t.Errorf("recreated topic: %+v", e)
	}
}

// TestTopicsUnderLoad publishes to a few topics from several goroutines,
// with subscribers following them and cache writes competing for memory,
// and checks what every subscriber saw and the bookkeeping afterwards.
func TestTopicsUnderLoad(t *testing.T) {
	b := newBackend(t, Handler{MaxItemSize: 1000, MaxMemory: 16 << 10, TopicBuffer: 16})
	const topics, publishers, perPublisher, subscribersPerTopic = 3, 4, 40, 2
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	errs := make(chan error, 100)

	var subs sync.WaitGroup
	for tp := range topics {
		for s := range subscribersPerTopic {
			subs.Go(func() {
				var seq, page uint64
				for {
					r, err := fetch(ctx, client, http.MethodGet, fmt.Sprintf("%s/topics/c/t%d?sequence_number=%d&sequence_page=%d", b.srv.URL, tp, seq, page), nil, nil)
					if err != nil || r.status != http.StatusOK {
						errs <- fmt.Errorf("topic %d subscriber %d: %d %q %v", tp, s, r.status, r.body, err)
						return
					}
					entries, err := decodeAnswer(r.body)
					if err != nil || len(entries) == 0 {
						errs <- fmt.Errorf("topic %d subscriber %d: %d entries, %v", tp, s, len(entries), err)
						return
					}
					for _, e := range entries {
						if !e.Disc && (e.Seq < seq || (page != 0 && e.Page != page)) {
							errs <- fmt.Errorf("topic %d subscriber %d: got %+v after asking for %d on page %d", tp, s, e, seq, page)
							return
						}
						seq, page = e.Seq, e.Page
						if !e.Disc {
							seq++
						}
						if e.Value == "end" {
							return
						}
					}
				}
			})
		}
	}
	var pubs sync.WaitGroup
	for p := range publishers {
		pubs.Go(func() {
			for i := range perPublisher {
				path := fmt.Sprintf("/topics/c/t%d", i%topics)
				if r, err := fetch(ctx, client, http.MethodPost, b.srv.URL+path, strings.NewReader(strings.Repeat("m", i*20)),
					map[string]string{"Content-Type": "application/octet-stream"}); err != nil || r.status != http.StatusNoContent {
					errs <- fmt.Errorf("publisher %d: %d %q %v", p, r.status, r.body, err)
					return
				}
				if r, err := fetch(ctx, client, http.MethodPut, fmt.Sprintf("%s/cache/c?key=p%d-%d&ttl_seconds=60", b.srv.URL, p, i),
					strings.NewReader(strings.Repeat("v", 500)), nil); err != nil || r.status != http.StatusNoContent {
					errs <- fmt.Errorf("publisher %d: put: %d %v", p, r.status, err)
					return
				}
			}
		})
	}
	pubs.Wait()
	for tp := range topics {
		b.publish(fmt.Sprintf("/topics/c/t%d", tp), "text/plain", "end")
	}
	subs.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	checkTopics(t, b.h.state.topics)
	checkInvariants(t, b.h.state.store)
}

func TestAppendJSONString(t *testing.T) {
	for _, s := range []string{"", "plain", "\"\\/\b\f\n\r\t\x00\x1f\x7f", "é✓🙂\u2028\u2029", "<script>&"} {
		got := appendJSONString(nil, []byte(s))
		var back string
		if err := json.Unmarshal(got, &back); err != nil || back != s {
			t.Errorf("%q encoded as %s, decodes to %q (%v)", s, got, back, err)
		}
	}
}

// waitingCost starts n subscribers that wait on handler, measures what the
// process holds once all of them wait, per subscriber, against before they
// started, then lets them go. started gets a value as each starts waiting.
// heap is live heap bytes after a collection (HeapAlloc), which, unlike
// HeapInuse, does not move in whole spans.
func waitingCost(tb testing.TB, n int, handler http.Handler, started <-chan struct{}, target func(i int) string) (goroutines, heap, stack float64) {
	srv := httptest.NewServer(handler)
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	g0 := runtime.NumGoroutine()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, _ = fetch(ctx, client, http.MethodGet, srv.URL+target(i), nil, nil)
		})
	}
	timeout := time.After(60 * time.Second)
	for range n {
		select {
		case <-started:
		case <-timeout:
			tb.Fatal("subscribers did not all start waiting")
		}
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	g1 := runtime.NumGoroutine()
	cancel()
	wg.Wait()
	client.CloseIdleConnections()

	per := func(a, b uint64) float64 { return (float64(a) - float64(b)) / float64(n) }
	return float64(g1-g0) / float64(n), per(after.HeapAlloc, before.HeapAlloc), per(after.StackInuse, before.StackInuse)
}

// subscriberCosts measures n waiting subscribers against a handler that
// only waits for its request to end, then against momento_local with all
// of them on one topic and on a topic each.
func subscriberCosts(tb testing.TB, n int, report func(name string, goroutines, heap, stack float64)) {
	started := make(chan struct{}, n)
	control := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		started <- struct{}{}
		<-r.Context().Done()
	})
	waitingCost(tb, n, control, started, func(int) string { return "/" }) // warms up the pools of net/http
	g, h, s := waitingCost(tb, n, control, started, func(int) string { return "/" })
	report("bare handler", g, h, s)

	for _, tc := range []struct {
		name   string
		target func(i int) string
	}{
		{"one topic", func(int) string { return "/topics/c/t" }},
		{"a topic each", func(i int) string { return fmt.Sprintf("/topics/c/t%d", i) }},
	} {
		lh, err := New(Handler{hooks: hooks{onWait: func() { started <- struct{}{} }}})
		if err != nil {
			tb.Fatal(err)
		}
		mg, mh, ms := waitingCost(tb, n, lh.HTTPHandler(), started, tc.target)
		lh.Close()
		report("momento_local, "+tc.name, mg, mh, ms)
		report("momento_local, "+tc.name+", beyond the bare handler", mg-g, mh-h, ms-s)
	}
}

// TestWaitingSubscriberCost checks that a waiting subscriber costs no
// goroutine beyond its request's. BenchmarkWaitingSubscribers reports the
// figures for more subscribers.
func TestWaitingSubscriberCost(t *testing.T) {
	subscriberCosts(t, 200, func(name string, goroutines, heap, stack float64) {
		t.Logf("%-52s %5.2f goroutines, %7.0f heap bytes, %6.0f stack bytes per waiting subscriber", name+":", goroutines, heap, stack)
		if strings.HasSuffix(name, "beyond the bare handler") && goroutines > 0.01 {
			t.Errorf("%s: %.2f extra goroutines per waiting subscriber, want 0", name, goroutines)
		}
	})
}

// BenchmarkWaitingSubscribers measures what 1000 subscribers waiting on
// loopback cost the process (client and server sides together), per
// subscriber. Run it once:
//
//	go test -run '^$' -bench WaitingSubscribers -benchtime 1x ./momentolocal/
func BenchmarkWaitingSubscribers(b *testing.B) {
	for b.Loop() {
		subscriberCosts(b, 1000, func(name string, goroutines, heap, stack float64) {
			b.Logf("%-52s %5.2f goroutines, %7.0f heap bytes, %6.0f stack bytes per waiting subscriber", name+":", goroutines, heap, stack)
		})
	}
}

func BenchmarkPublish(b *testing.B) {
	h, err := New(Handler{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	req := httptest.NewRequest(http.MethodPost, "/topics/c/t", nil)
	req.Header.Set("Content-Type", "text/plain")
	benchmarkUpload(b, h.HTTPHandler(), req, bytes.Repeat([]byte("m"), 100))
}

// BenchmarkSubscribe measures a subscribe that is answered at once with
// ten 100-byte messages.
func BenchmarkSubscribe(b *testing.B) {
	h, err := New(Handler{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	for range 10 {
		h.state.topics.publish("c", "t", encodeValue(bytes.Repeat([]byte("m"), 100), false))
	}
	handler := h.HTTPHandler()
	req := httptest.NewRequest(http.MethodGet, "/topics/c/t?sequence_number=0", nil)
	w := &discardWriter{header: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.header)
		handler.ServeHTTP(w, req)
	}
	if w.status != http.StatusOK {
		b.Fatalf("status %d", w.status)
	}
}
