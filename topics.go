package momento

import (
	"cmp"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// TopicsConfig sets how the gateway serves topic subscribers: by default
// every topic with waiting clients has one upstream subscription, a hub,
// shared by all of them (long polls and Server-Sent Events alike).
type TopicsConfig struct {
	// "on" (default) shares one upstream subscription per topic among its
	// subscribers; "off" forwards each long poll to the region as it is
	// (and Server-Sent Events are then not offered).
	Hub string `json:"hub,omitempty"`

	// How many of a topic's latest messages its hub keeps, for subscribers
	// that poll again or reconnect. Default: 256.
	Buffer int `json:"buffer,omitempty"`

	// How many bytes of messages a hub keeps at most (counted as the JSON
	// subscribers receive). Default: 1 MiB.
	BufferSize int64 `json:"buffer_size,omitempty"`

	// How long a hub keeps its upstream subscription after its last
	// subscriber left, so that one polling again finds it. Default: 10s.
	Linger caddy.Duration `json:"linger,omitempty"`

	// How often an idle event stream gets a comment line, so that proxies
	// and browsers keep it open. Default: 15s.
	Heartbeat caddy.Duration `json:"heartbeat,omitempty"`
}

// Topic defaults, as documented on TopicsConfig.
const (
	defaultTopicBuffer     = 256
	defaultTopicBufferSize = 1 << 20
	defaultTopicLinger     = 10 * time.Second
	defaultHeartbeat       = 15 * time.Second
)

// topicSettings are a config's topic settings, with defaults.
type topicSettings struct {
	hubOff    bool
	hub       hubSettings
	heartbeat time.Duration
}

func (c *TopicsConfig) settings() topicSettings {
	var v TopicsConfig
	if c != nil {
		v = *c
	}
	return topicSettings{
		hubOff: v.Hub == "off",
		hub: hubSettings{
			buffer:     cmp.Or(v.Buffer, defaultTopicBuffer),
			bufferSize: int(cmp.Or(v.BufferSize, defaultTopicBufferSize)),
			linger:     cmp.Or(time.Duration(v.Linger), defaultTopicLinger),
		},
		heartbeat: cmp.Or(time.Duration(v.Heartbeat), defaultHeartbeat),
	}
}

func (c *TopicsConfig) validate() error {
	if c == nil {
		return nil
	}
	switch {
	case c.Hub != "" && c.Hub != "on" && c.Hub != "off":
		return fieldErrorf("topics.hub", "topics hub %q: use on or off", c.Hub)
	case c.Buffer < 0:
		return fieldErrorf("topics.buffer", "topics buffer %d must be positive", c.Buffer)
	case c.BufferSize < 0:
		return fieldErrorf("topics.buffer_size", "topics buffer_size %d must be positive", c.BufferSize)
	case c.Linger < 0:
		return fieldErrorf("topics.linger", "topics linger %s must be positive", time.Duration(c.Linger))
	case c.Heartbeat < 0:
		return fieldErrorf("topics.heartbeat", "topics heartbeat %s must be positive", time.Duration(c.Heartbeat))
	}
	return nil
}

// wantsEventStream reports a subscribe that asks for Server-Sent Events
// (what EventSource sends).
func wantsEventStream(r *http.Request) bool {
	return strings.Contains(r.Header.Get("Accept"), "text/event-stream")
}

// subscribe serves a subscriber from the topic's hub: a long poll, or an
// event stream. The subscriber waits without holding anything upstream of
// its own, and without a goroutine of its own. With the hub off, a long
// poll goes to the region as it is.
func (h *Handler) subscribe(w http.ResponseWriter, r *http.Request, c *call) (status int, cutOff bool) {
	var sub hubClient
	switch st := h.startSubscriber(w, r, c, &sub); {
	case st == forwardSubscribe:
		return h.proxy(w, r, c)
	case sub.hub == nil:
		return st, false
	}
	defer sub.end()
	if sub.heartbeat > 0 {
		return h.stream(w, r, &sub), false
	}
	// The answer is written here, not down in longPoll: see serve. This
	// frame is on the stack while the client waits, and kept small for it.
	body, rf := h.longPoll(r, &sub)
	switch {
	case rf != nil:
		return rf.write(w), false
	case sub.big != nil:
		return writeLongPoll(w, *sub.big), false
	case body == nil:
		w.WriteHeader(499) // for the access log: the client went away
		return 499, false
	}
	return writeJSON200(w, body), false
}

// hubClient is a client waiting on a topic's hub: its place among the
// waiters, and where it is in the topic.
type hubClient struct {
	slot *waitSlot
	hub  *hub
	cur  cursor
	// heartbeat is set for an event stream: how often a quiet one gets a
	// comment line.
	heartbeat time.Duration
	// big is a long poll's answer too large to build whole (see
	// longPollBody).
	big *hubAnswer
}

// forwardSubscribe is startSubscriber's status for a long poll that goes
// to the region as it is (the hub off).
const forwardSubscribe = -1

// startSubscriber admits a subscriber and joins it to its topic's hub, or
// answers it (a refusal: then sub.hub stays nil, and st is the status).
func (h *Handler) startSubscriber(w http.ResponseWriter, r *http.Request, c *call, sub *hubClient) (st int) {
	set := h.app.topics()
	stream := wantsEventStream(r)
	switch {
	case set.hubOff && stream:
		return refuse(http.StatusNotAcceptable, "Server-Sent Events need the topic hub, which is off here (topics { hub off }): long-poll this topic instead").write(w)
	case set.hubOff:
		return forwardSubscribe
	}
	kind := waitLongPoll
	if stream {
		kind = waitSSE
		sub.heartbeat = set.heartbeat
	}
	sub.cur = cursor{next: c.seqNumber, page: c.seqPage, given: c.hasSeqNumber}
	if id := r.Header.Get("Last-Event-ID"); stream && id != "" {
		// EventSource reconnecting: go on right after the last event.
		page, seq, ok := parseEventID(id)
		if !ok {
			return refuse(http.StatusBadRequest, "Last-Event-ID "+strconv.Quote(id)+" is not an event id of this gateway (page-sequence)").write(w)
		}
		sub.cur = cursor{next: seq + 1, page: page, given: true}
	}
	// A malformed resume was refused above, whatever the limits: it is
	// bad input, and it takes no place among the waiters.
	slot, rf := h.app.admitWaiter(r, kind)
	if rf != nil {
		return rf.write(w)
	}
	defer func() {
		if sub.hub == nil {
			slot.release() // not joined (refused, or a panic): the place is free again
		}
	}()
	rg := c.region
	// Starting a hub is a call to the region, and counts against the
	// client's max_ops_per_client; joining one costs the region nothing.
	admit := func() *refusal { return h.app.admitOp(r, c) }
	hb, rf := rg.state.hubs.join(rg, hubKey{c.cache, c.topic}, sub.cur, set.hub, slot.network, admit, h.logger)
	if rf != nil {
		return rf.write(w)
	}
	sub.slot, sub.hub = slot, hb
	return 0
}

// end takes the subscriber off its hub and gives its place back.
func (sub *hubClient) end() {
	sub.hub.leave(sub.slot.network)
	sub.slot.release()
}

// longPoll waits until the hub has something at or after the cursor, and
// returns the answer: the hub's items, or after subscribe_timeout an empty
// page (the client polls again), or a refusal when the region is down and
// nothing is buffered. Nothing (nil, nil) and sub.big unset: the client
// went away.
func (h *Handler) longPoll(r *http.Request, sub *hubClient) (body []byte, rf *refusal) {
	end := time.Now().Add(h.subscribeTimeout)
	deadline := time.NewTimer(h.subscribeTimeout)
	defer deadline.Stop()
	for {
		ans, rf, wait := pollNow(sub.hub, sub.cur, end)
		switch {
		case rf != nil:
			return nil, rf
		case wait == nil:
			return longPollBody(sub, ans), nil
		}
		select {
		case <-wait:
		case <-deadline.C:
			if rf := emptyPoll(sub.hub); rf != nil {
				return nil, rf
			}
			return []byte(`{"items":[]}`), nil
		case <-r.Context().Done():
			return nil, nil
		}
	}
}

// longPollBody is a small answer built whole (most answers: one message,
// or a few), or nil with the answer kept in sub.big, to be written piece
// by piece. It is not inlined: its locals would add to longPoll's frame,
// which is on the stack while the client waits, and take thousands of
// waits at once past their goroutines' first 8 KiB of stack.
//
//go:noinline
func longPollBody(sub *hubClient, ans hubAnswer) []byte {
	if n := piecesLen(ans.jsonPieces); n <= answerBufSize {
		return appendPieces(make([]byte, 0, n), ans.jsonPieces)
	}
	sub.big = &ans
	return nil
}

// pollNow answers a long poll if the hub has something at or after the
// cursor, or is final, or its region is down until after the poll would
// end (end); otherwise it returns the channel to wait on.
func pollNow(hb *hub, cur cursor, end time.Time) (ans hubAnswer, rf *refusal, wait <-chan struct{}) {
	ans, final, wait := hb.read(cur)
	switch {
	case final != nil:
		return ans, final, nil
	case wait == nil:
		return ans, nil, nil
	}
	// Nothing to give yet. If the region is down until after this poll
	// would end, say so now; otherwise the hub keeps trying.
	if retry, down := hb.regionDown(); down && time.Now().Add(retry).After(end) {
		return ans, hb.region.Load().unavailable(retry), nil
	}
	return ans, nil, wait
}

// emptyPoll is the answer to a long poll that waited subscribe_timeout
// and got nothing: an empty page (no refusal), or 503 if the region is
// really gone.
func emptyPoll(hb *hub) *refusal {
	if retry, down := hb.regionDown(); down {
		return hb.region.Load().unavailable(retry)
	}
	return nil
}

func writeJSON200(w http.ResponseWriter, body []byte) int {
	hdr := w.Header()
	hdr["Content-Type"] = jsonType
	hdr["X-Content-Type-Options"] = noSniff
	hdr["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
	return http.StatusOK
}

// writeLongPoll answers a long poll with a large answer of the hub's,
// piece by piece: a client that does not read holds no copy of its answer
// (see answerWriter), only the hub's messages, and for clientStall at most
// once it stops taking them.
func writeLongPoll(w http.ResponseWriter, ans hubAnswer) int {
	hdr := w.Header()
	hdr["Content-Type"] = jsonType
	hdr["X-Content-Type-Options"] = noSniff
	n := piecesLen(ans.jsonPieces)
	hdr["Content-Length"] = []string{strconv.Itoa(n)}
	w.WriteHeader(http.StatusOK)
	aw := newAnswerWriter(w)
	aw.guard = &stallGuard{rc: http.NewResponseController(w), stall: clientStall}
	ans.jsonPieces(aw.put)
	aw.done()
	return http.StatusOK
}

// unavailable is the answer while the region's breaker is open.
func (rg *region) unavailable(retry time.Duration) *refusal {
	return &refusal{status: http.StatusServiceUnavailable, msg: rg.rejectMsg + strconv.FormatInt(retryAfterSeconds(retry), 10) + " s", retryAfter: retry}
}

// stream serves the topic as Server-Sent Events until the client leaves:
// one event per message, with an id EventSource sends back when it
// reconnects, a discontinuity event when messages were lost, and a comment
// line every heartbeat while the topic is quiet.
func (h *Handler) stream(w http.ResponseWriter, r *http.Request, sub *hubClient) int {
	hb, cur := sub.hub, sub.cur
	hdr := w.Header()
	hdr["Content-Type"] = []string{"text/event-stream"}
	hdr["X-Content-Type-Options"] = noSniff
	hdr.Set("Cache-Control", "no-cache")
	hdr.Set("X-Accel-Buffering", "no") // proxies in front: do not buffer the stream
	w.WriteHeader(http.StatusOK)
	// send writes to the client, which must take it within clientStall: a
	// stream that stopped reading would otherwise hold what it was sent
	// (and the hub's view it came from) for as long as it stays connected.
	g := stallGuard{rc: http.NewResponseController(w), stall: clientStall}
	send := func(b []byte) bool {
		g.arm()
		defer g.disarm()
		_, err := w.Write(b)
		return err == nil && g.rc.Flush() == nil
	}
	sendAnswer := func(ans hubAnswer) bool {
		g.arm()
		defer g.disarm()
		aw := newAnswerWriter(w)
		ans.eventPieces(aw.put)
		return aw.done() && g.rc.Flush() == nil
	}
	if !send(nil) {
		return http.StatusOK
	}
	beat := time.NewTicker(sub.heartbeat)
	defer beat.Stop()
	for {
		ans, final, wait := hb.read(cur)
		switch {
		case final != nil:
			// The region refused the subscription (a missing cache, say):
			// tell the page, and end the stream.
			send(fmt.Appendf(nil, "event: error\ndata: %d %s\n\n", final.status, oneLine(final.msg)))
			return http.StatusOK
		case wait == nil:
			sent := false
			if n := piecesLen(ans.eventPieces); n <= answerBufSize {
				sent = send(appendPieces(make([]byte, 0, n), ans.eventPieces))
			} else {
				sent = sendAnswer(ans)
			}
			if !sent {
				return http.StatusOK // the client went away, or stopped reading
			}
			cur = ans.after(cur)
			continue
		}
		select {
		case <-wait:
		case <-beat.C:
			if !send([]byte(": heartbeat\n\n")) {
				return http.StatusOK
			}
		case <-r.Context().Done():
			return http.StatusOK
		}
	}
}

// appendEvent writes one message as a Server-Sent Event: its id (page
// and sequence number, what EventSource sends back as Last-Event-ID), its
// kind as the event's name, and its data.
func appendEvent(b []byte, page, seq uint64, kind, data string) []byte {
	b = fmt.Appendf(b, "id: %d-%d\nevent: %s\n", page, seq, kind)
	// A line break in a text ends an SSE line: each line is a data line,
	// and EventSource joins them with "\n".
	for line := range strings.Lines(strings.ReplaceAll(strings.ReplaceAll(data, "\r\n", "\n"), "\r", "\n")) {
		b = append(append(append(b, "data: "...), strings.TrimSuffix(line, "\n")...), '\n')
	}
	if data == "" || strings.HasSuffix(data, "\n") {
		b = append(b, "data: \n"...)
	}
	return append(b, '\n')
}

// parseEventID reads an event id, "<page>-<sequence number>".
func parseEventID(id string) (page, seq uint64, ok bool) {
	p, s, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	page, ok1 := parseUint(p)
	seq, ok2 := parseUint(s)
	return page, seq, ok1 && ok2
}

func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }
