package momento

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// A topic hub is one upstream subscription shared by every client waiting
// on one topic of one region: Momento admits 100 subscriptions per region
// by default, and browsers come in thousands. While a client waits, one
// upstream long-poll loop runs for the topic; it keeps the topic's last
// messages and wakes every waiter. Waiters keep Momento's API: they ask
// with Momento's sequence numbers and pages, and get Momento's answers.

// hubKey names a hub within its region: the cache and the topic's name
// upstream (after topic_prefix, so users never share a hub they should not).
type hubKey struct{ cache, topic string }

// regionHubs are a region's hubs; they live with its other shared state.
type regionHubs struct {
	mu    sync.Mutex
	byKey map[hubKey]*hub
}

// hubSettings are the bounds of a hub, from the global topics options.
type hubSettings struct {
	buffer     int           // messages kept
	bufferSize int           // bytes kept (the messages' JSON)
	linger     time.Duration // how long the upstream loop outlives its last waiter
}

// hub is one topic's shared subscription.
type hub struct {
	key   hubKey
	owner *regionState
	// network is the client network the hub counts for in the shares of
	// the region's subscriptions (see shares): the one that started it,
	// then, once none of its clients wait on it, one whose clients do. A
	// topic kept open by others' clients counts as theirs: one network
	// cannot hold another's share by joining its topics. Guarded by mu.
	network string
	set     hubSettings
	logger  *zap.Logger
	// done is closed when the hub's upstream loop has returned: a hub
	// that replaces it subscribes only then, so that the region never
	// sees both subscriptions at once.
	done chan struct{}
	// region is the latest config's region: its endpoint and token.
	region atomic.Pointer[region]

	// view is what waiters read, without a lock: thousands of them wake
	// at once when a message arrives.
	view atomic.Pointer[hubView]

	// mu serializes the hub's writers and guards what follows.
	mu      sync.Mutex
	waiters int
	// byNetwork counts the waiters of each client network.
	byNetwork map[string]int
	size      int // bytes of the view's messages
	stop      context.CancelFunc
	linger    *time.Timer
	gone      bool // removed from its region; a new waiter makes another
}

// hubView is the state of a hub's topic as its waiters see it. A view never
// changes once published: a new one replaces it, and closing the old one's
// changed channel wakes its waiters.
type hubView struct {
	// started is set by the first answer from the region: page and next
	// are Momento's from then on.
	started bool
	page    uint64
	// next is the number the next message will have; msgs hold the ones
	// before it, consecutive, oldest first.
	next uint64
	msgs []hubMessage
	// final is the region's answer that ended the hub (a missing cache, a
	// refused token), for its waiters.
	final   *refusal
	changed chan struct{}
}

// hubMessage is one message, encoded once, in both forms, for every client
// that reads it. Answers are written from these pieces as they are (see
// answerWriter): a client that stops reading holds no copy of its own.
type hubMessage struct {
	seq   uint64
	page  uint64
	item  []byte // {"item":{…}}, as it stands in a subscribe answer
	event []byte // the Server-Sent Event: id, event (text or binary) and data lines
}

// Hub bounds that are not settings.
const (
	// hubPollTimeout bounds one upstream long poll; the hub polls again.
	hubPollTimeout = 50 * time.Second
	// maxItemsPerAnswer is how many messages one answer carries at most,
	// as Momento's.
	maxItemsPerAnswer = 100
	// maxPollAnswer bounds the body of an upstream subscribe answer read.
	maxPollAnswer = 16 << 20
	// hubBackoffMin and hubBackoffMax bound the pause between upstream
	// attempts that failed.
	hubBackoffMin = 100 * time.Millisecond
	hubBackoffMax = 5 * time.Second
)

// counts are the region's hubs and the clients waiting on them.
func (rh *regionHubs) counts() (hubs, waiting int) {
	rh.mu.Lock()
	defer rh.mu.Unlock()
	for _, hb := range rh.byKey {
		hb.mu.Lock()
		waiting += hb.waiters
		hb.mu.Unlock()
	}
	return len(rh.byKey), waiting
}

// join adds a waiter to the topic's hub, starting one (and its upstream
// subscription) if there is none. A new hub takes one of the region's
// max_subscriptions, within the share of the client's network, and is a
// call to the region that admit may refuse (max_ops_per_client); past
// either, 429. The cursor of the first waiter is where the upstream
// subscription starts.
func (rh *regionHubs) join(rg *region, key hubKey, cur cursor, set hubSettings, network string, admit func() *refusal, logger *zap.Logger) (*hub, *refusal) {
	rh.mu.Lock()
	defer rh.mu.Unlock()
	hb := rh.byKey[key]
	if hb == nil {
		// The share is checked before any lingering hub is ended for the
		// new one. A network at its share waits for one of its own to end,
		// even a lingering one: hubs outlive their last waiter by linger,
		// so a client touching topic after topic starts at most its share
		// of subscriptions upstream every linger, not one per request.
		if rf := rg.takeSubscriptionShare(network, set.linger); rf != nil {
			return nil, rf
		}
		if rf := admit(); rf != nil {
			rg.state.subscriptionShares.give(network)
			return nil, rf
		}
		n := rg.state.subscriptions.Add(1)
		var after <-chan struct{} // the end of the hub this one replaces
		if n > int64(rg.maxSubscriptions) {
			if ended := rh.evictIdle(); ended != nil {
				n, after = rg.state.subscriptions.Load(), ended.done
			}
		}
		if n > int64(rg.maxSubscriptions) {
			rg.state.subscriptions.Add(-1)
			rg.state.subscriptionShares.give(network)
			return nil, tooManySubscriptions(rg)
		}
		hb = &hub{key: key, owner: rg.state, network: network, set: set, logger: logger, done: make(chan struct{})}
		hb.view.Store(&hubView{changed: make(chan struct{})})
		ctx, cancel := context.WithCancel(context.Background())
		hb.stop = cancel
		if rh.byKey == nil {
			rh.byKey = map[hubKey]*hub{}
		}
		rh.byKey[key] = hb
		rg.metrics.hubs.Inc()
		hb.region.Store(rg)
		go hb.run(ctx, cur, after)
	}
	hb.region.Store(rg)
	hb.mu.Lock()
	hb.waiters++
	if hb.byNetwork == nil {
		hb.byNetwork = map[string]int{}
	}
	hb.byNetwork[network]++
	if hb.linger != nil {
		hb.linger.Stop()
		hb.linger = nil
	}
	hb.mu.Unlock()
	return hb, nil
}

// evictIdle ends one hub that nobody waits on (it lingers), to give its
// upstream subscription to a topic someone waits for: a lingering hub only
// saves a client's next poll the trip, and must never keep max_subscriptions
// from other clients (a client could otherwise touch many topics in turn
// and hold them all). It returns the hub it ended, or nil. Callers hold
// rh.mu.
func (rh *regionHubs) evictIdle() *hub {
	for key, hb := range rh.byKey {
		hb.mu.Lock()
		idle := hb.waiters == 0 && !hb.gone
		if idle {
			hb.gone = true
			if hb.linger != nil {
				hb.linger.Stop()
				hb.linger = nil
			}
			hb.owner.subscriptions.Add(-1)
			hb.owner.subscriptionShares.give(hb.network)
			hb.region.Load().metrics.hubs.Dec()
		}
		hb.mu.Unlock()
		if idle {
			delete(rh.byKey, key)
			hb.stop()
			return hb
		}
	}
	return nil
}

// leave removes a waiter. The last one starts the linger: a client that
// polls again soon finds the hub (and its buffer) still there.
func (hb *hub) leave(network string) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	hb.waiters--
	if hb.byNetwork[network]--; hb.byNetwork[network] <= 0 {
		delete(hb.byNetwork, network)
		if network == hb.network && !hb.gone {
			// Its clients are gone: the hub counts for one whose clients
			// still wait on it, if any.
			for other := range hb.byNetwork {
				hb.owner.subscriptionShares.move(hb.network, other)
				hb.network = other
				break
			}
		}
	}
	if hb.waiters == 0 && !hb.gone {
		hb.linger = time.AfterFunc(hb.set.linger, hb.expire)
	}
}

// expire ends a hub nobody waited on for its linger, unless one came
// meanwhile.
func (hb *hub) expire() { hb.end(true) }

// remove takes the hub out of its region and ends its upstream loop.
func (hb *hub) remove() { hb.end(false) }

// end ends the hub (if onlyIdle, only while nobody waits on it). It holds
// the region's hubs' lock throughout, as join does: a client joining at the
// moment the linger ends either keeps the hub or finds it gone and starts
// another, never a hub whose loop has stopped.
func (hb *hub) end(onlyIdle bool) {
	rh := &hb.owner.hubs
	rh.mu.Lock()
	hb.mu.Lock()
	ending := !onlyIdle || hb.waiters == 0
	if ending {
		if rh.byKey[hb.key] == hb {
			delete(rh.byKey, hb.key)
		}
		if !hb.gone {
			hb.gone = true
			hb.owner.subscriptions.Add(-1)
			hb.owner.subscriptionShares.give(hb.network)
			hb.region.Load().metrics.hubs.Dec()
		}
	}
	hb.mu.Unlock()
	rh.mu.Unlock()
	if ending {
		hb.stop()
	}
}

// cursor is where a client is in a topic: the next sequence number it
// expects and the page it saw (0: none yet), as Momento's subscribe takes.
type cursor struct {
	next, page uint64
	// given records that the client named a sequence number.
	given bool
}

// discontinuity tells a client that messages it asked for are not there:
// it goes on from newSeq in newPage, as Momento's answer says.
type discontinuity struct{ last, newSeq, newPage uint64 }

// hubAnswer is what a waiter gets: a discontinuity, messages, or both (or
// neither: the empty page of a long poll that waited in vain).
type hubAnswer struct {
	disc *discontinuity
	msgs []hubMessage
}

// read answers a cursor from the buffer, or returns the channel to wait on
// until there is something new.
func (hb *hub) read(cur cursor) (ans hubAnswer, final *refusal, wait <-chan struct{}) {
	v := hb.view.Load()
	if v.final != nil {
		return ans, v.final, nil
	}
	if !v.started {
		return ans, nil, v.changed
	}
	first := v.next - uint64(len(v.msgs))
	last := cur.next - min(cur.next, 1) // unsigned: 0 when next is 0
	switch {
	case cur.page != 0 && cur.page != v.page:
		// Another page: the topic's numbering restarted since the client
		// last read. It goes on from the oldest message kept.
		ans.disc = &discontinuity{last: last, newSeq: first, newPage: v.page}
		ans.msgs = v.msgs[:min(len(v.msgs), maxItemsPerAnswer)]
	case cur.next > v.next:
		// Ahead of the topic: it goes on from the next message.
		ans.disc = &discontinuity{last: last, newSeq: v.next, newPage: v.page}
	case cur.next < first:
		// Behind the buffer: the messages between are gone.
		ans.disc = &discontinuity{last: last, newSeq: first, newPage: v.page}
		ans.msgs = v.msgs[:min(len(v.msgs), maxItemsPerAnswer)]
	case cur.next < v.next:
		from := int(cur.next - first)
		ans.msgs = v.msgs[from:min(len(v.msgs), from+maxItemsPerAnswer)]
	default:
		return ans, nil, v.changed
	}
	hb.owner.fannedOut.Add(int64(len(ans.msgs)))
	return ans, nil, nil
}

// after is the cursor that follows an answer.
func (ans hubAnswer) after(cur cursor) cursor {
	if ans.disc != nil {
		cur = cursor{next: ans.disc.newSeq, page: ans.disc.newPage, given: true}
	}
	if n := len(ans.msgs); n > 0 {
		cur.next = ans.msgs[n-1].seq + 1
	}
	return cur
}

// Answers are written piece by piece: the framing, and each message's
// encoding as the hub keeps it. A client that does not read (an HTTP/2
// stream with a closed window, say) then holds the hub's messages, which it
// shares with every other client, and one small buffer: never an answer of
// its own, which at 100 messages could be megabytes.

// jsonPieces gives put the answer as Momento's subscribe answer, piece by
// piece. Its length (for Content-Length), the small answer built whole and
// the large one written in pieces all come from this one walk.
func (ans hubAnswer) jsonPieces(put func([]byte)) {
	put(startItems)
	if d := ans.disc; d != nil {
		put(fmt.Appendf(nil, `{"discontinuity":{"last_topic_sequence":%d,"new_topic_sequence":%d,"new_sequence_page":%d}}`, d.last, d.newSeq, d.newPage))
	}
	for i, m := range ans.msgs {
		if i > 0 || ans.disc != nil {
			put(comma)
		}
		put(m.item)
	}
	put(endItems)
}

// eventPieces gives put the answer as Server-Sent Events, piece by piece.
func (ans hubAnswer) eventPieces(put func([]byte)) {
	if d := ans.disc; d != nil {
		put(fmt.Appendf(nil, "event: discontinuity\ndata: {\"last_topic_sequence\":%d,\"new_topic_sequence\":%d,\"new_sequence_page\":%d}\n\n", d.last, d.newSeq, d.newPage))
	}
	for _, m := range ans.msgs {
		put(m.event)
	}
}

var startItems, comma, endItems = []byte(`{"items":[`), []byte(","), []byte("]}")

// piecesLen is the length of what pieces gives.
func piecesLen(pieces func(put func([]byte))) int {
	n := 0
	pieces(func(b []byte) { n += len(b) })
	return n
}

// appendPieces appends what pieces gives to b: a small answer, built whole
// before it is written (see subscribe).
func appendPieces(b []byte, pieces func(put func([]byte))) []byte {
	pieces(func(p []byte) { b = append(b, p...) })
	return b
}

// answerWriter writes an answer made of pieces: small ones gathered in a
// buffer (one Write for a usual answer), big ones as they are.
type answerWriter struct {
	w   io.Writer
	buf []byte
	err error
	// guard, when set, gives each write clientStall: a client that stops
	// reading would otherwise hold the messages it is being sent after the
	// hub let go of them, until Caddy's write_idle_timeout.
	guard *stallGuard
}

// answerBufSize is the buffer an answer's small pieces are gathered in.
// An answer that fits (most: one message or a few) is built whole instead
// (appendPieces) and written at once.
const answerBufSize = 4 << 10

var answerBufs = sync.Pool{New: func() any { return new([answerBufSize]byte) }}

func newAnswerWriter(w io.Writer) answerWriter {
	return answerWriter{w: w, buf: answerBufs.Get().(*[answerBufSize]byte)[:0]}
}

func (aw *answerWriter) put(b []byte) {
	if len(aw.buf)+len(b) > cap(aw.buf) {
		aw.flush()
		if len(b) > cap(aw.buf)/2 {
			aw.write(b)
			return
		}
	}
	aw.buf = append(aw.buf, b...)
}

func (aw *answerWriter) write(b []byte) {
	if aw.err == nil {
		if aw.guard != nil {
			aw.guard.arm()
		}
		_, aw.err = aw.w.Write(b)
	}
}

// flush writes what is gathered.
func (aw *answerWriter) flush() {
	if len(aw.buf) > 0 {
		aw.write(aw.buf)
		aw.buf = aw.buf[:0]
	}
}

// done writes what is gathered and gives the buffer back. It reports
// whether every write succeeded.
func (aw *answerWriter) done() bool {
	aw.flush()
	if aw.guard != nil {
		aw.guard.disarm()
	}
	if cap(aw.buf) == answerBufSize {
		answerBufs.Put((*[answerBufSize]byte)(aw.buf[:answerBufSize]))
	}
	aw.buf = nil
	return aw.err == nil
}

// publish makes a new view the one waiters read, and wakes the waiters of
// the old one. Callers hold hb.mu.
func (hb *hub) publish(v *hubView) {
	old := hb.view.Load()
	v.changed = make(chan struct{})
	hb.view.Store(v)
	close(old.changed)
}

// regionDown reports whether the hub's region refuses everything (its
// breaker is open), and for how long.
func (hb *hub) regionDown() (time.Duration, bool) {
	wait, ok := hb.region.Load().state.breaker.admitLongPoll()
	return wait, !ok
}

// run is the hub's upstream loop: one long poll at a time, from the first
// waiter's cursor, then from where the topic is. Failures are retried with
// backoff (honouring a 429's Retry-After) while the waiters wait; an answer
// that will not change (a missing cache, a refused token) ends the hub.
// A hub that replaces an ended one starts once that one's loop (after)
// has returned.
func (hb *hub) run(ctx context.Context, cur cursor, after <-chan struct{}) {
	defer close(hb.done)
	if after != nil {
		select {
		case <-after:
		case <-ctx.Done():
			return
		}
	}
	backoff := hubBackoffMin
	for ctx.Err() == nil {
		rg := hb.region.Load()
		b := rg.state.breaker
		if wait, ok := b.admitLongPoll(); !ok {
			// The region is down: waiters whose wait ends before it may be
			// back are told now.
			hb.wake()
			sleep(ctx, wait)
			continue
		}
		if v := hb.view.Load(); v.started {
			cur = cursor{next: v.next, page: v.page, given: true}
		}
		page, status, retryAfter, body, err := hb.poll(ctx, rg, cur)
		switch {
		case ctx.Err() != nil:
			return // the hub ended: says nothing about the region
		case err != nil && errors.Is(err, errUpstreamTimeout):
			// A quiet topic: poll again.
		case err != nil && localExhaustion(err):
			// This machine is out of sockets: not the region's doing.
			b.record(errExcluded)
			hb.logger.Warn("topic hub: gateway out of sockets", zap.String("region", rg.name), zap.Error(err))
			backoff = pause(ctx, backoff, 0)
		case err != nil:
			b.record(errUpstreamFailure)
			hb.logger.Debug("topic hub: region unreachable", zap.String("region", rg.name), zap.Error(err))
			backoff = pause(ctx, backoff, 0)
		case status >= 500:
			b.record(errUpstreamFailure)
			backoff = pause(ctx, backoff, 0)
		case status == http.StatusTooManyRequests:
			b.record(nil)
			backoff = pause(ctx, backoff, retryAfter)
		case status != http.StatusOK:
			b.record(nil)
			hb.finish(&refusal{status: status, msg: body})
			return
		default:
			b.record(nil)
			hb.apply(page)
			backoff = hubBackoffMin
		}
	}
}

// poll is one upstream long poll.
func (hb *hub) poll(ctx context.Context, rg *region, cur cursor) (page upstreamPage, status int, retryAfter time.Duration, body string, err error) {
	ctx, cancel := context.WithTimeoutCause(ctx, hubPollTimeout, errUpstreamTimeout)
	defer cancel()
	q := ""
	if cur.given {
		q = "sequence_number=" + strconv.FormatUint(cur.next, 10)
	}
	if cur.page != 0 {
		q += "&sequence_page=" + strconv.FormatUint(cur.page, 10)
	}
	out := (&http.Request{}).WithContext(ctx)
	out.Method = http.MethodGet
	out.URL = &url.URL{Scheme: rg.scheme, Host: rg.host, Path: rg.basePath + topicsPrefix + hb.key.cache + "/" + hb.key.topic, RawQuery: strings.TrimPrefix(q, "&")}
	out.Header = http.Header{"Authorization": rg.token.authHeader(), "User-Agent": userAgent}
	out.Host = rg.host
	resp, err := rg.state.longPoll.RoundTrip(out)
	if err != nil {
		if cause := context.Cause(ctx); cause != nil {
			return page, 0, 0, "", cause
		}
		return page, 0, 0, "", unwrapURLError(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxPollAnswer))
	if err != nil {
		return page, 0, 0, "", unwrapURLError(err)
	}
	if resp.StatusCode != http.StatusOK {
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			retryAfter = time.Duration(s) * time.Second
		}
		return page, resp.StatusCode, retryAfter, string(raw), nil
	}
	if err := json.Unmarshal(raw, &page); err != nil {
		return page, 0, 0, "", fmt.Errorf("the region's subscribe answer is not JSON: %w", err)
	}
	return page, resp.StatusCode, 0, "", nil
}

// upstreamPage is Momento's subscribe answer.
type upstreamPage struct {
	Items []upstreamItem `json:"items"`
}

// upstreamItem is one entry of a subscribe answer: a message, or a
// discontinuity.
type upstreamItem struct {
	Item *struct {
		TopicSequenceNumber uint64 `json:"topic_sequence_number"`
		SequencePage        uint64 `json:"sequence_page"`
		Value               struct {
			Text   *string `json:"text"`
			Binary *string `json:"binary"`
		} `json:"value"`
	} `json:"item"`
	Discontinuity *struct {
		LastTopicSequence uint64 `json:"last_topic_sequence"`
		NewTopicSequence  uint64 `json:"new_topic_sequence"`
		NewSequencePage   uint64 `json:"new_sequence_page"`
	} `json:"discontinuity"`
}

// apply takes an upstream answer into the buffer and wakes the waiters. A
// discontinuity upstream, or a change of page, empties the buffer: the
// waiters behind get a discontinuity of their own.
func (hb *hub) apply(page upstreamPage) {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	old := hb.view.Load()
	// The new view's messages never share an array with the old view's.
	v := &hubView{started: old.started, page: old.page, next: old.next, msgs: old.msgs[:len(old.msgs):len(old.msgs)]}
	changed := false
	for _, e := range page.Items {
		switch {
		case e.Discontinuity != nil:
			v.started, v.page, v.next = true, e.Discontinuity.NewSequencePage, e.Discontinuity.NewTopicSequence
			v.msgs, hb.size = nil, 0
			changed = true
		case e.Item != nil:
			it := e.Item
			if !v.started || it.SequencePage != v.page || it.TopicSequenceNumber > v.next {
				v.started, v.page, v.next = true, it.SequencePage, it.TopicSequenceNumber
				v.msgs, hb.size = nil, 0
			}
			if it.TopicSequenceNumber < v.next {
				continue // already kept
			}
			var kind, data string
			switch {
			case it.Value.Binary != nil:
				kind, data = "binary", *it.Value.Binary
			case it.Value.Text != nil:
				kind, data = "text", *it.Value.Text
			default:
				continue
			}
			// Encoded anew, so that only what Momento's API defines reaches
			// the clients.
			m := hubMessage{seq: it.TopicSequenceNumber, page: it.SequencePage}
			m.item = fmt.Appendf(nil, `{"item":{"topic_sequence_number":%d,"sequence_page":%d,"value":{"%s":%s}}}`, m.seq, m.page, kind, jsonString(data))
			m.event = appendEvent(nil, m.page, m.seq, kind, data)
			v.msgs = append(v.msgs, m)
			hb.size += len(m.item)
			v.next = m.seq + 1
			changed = true
		}
	}
	// Keep the last messages, within both bounds (always the newest one).
	drop := 0
	for len(v.msgs)-drop > 1 && (len(v.msgs)-drop > hb.set.buffer || hb.size > hb.set.bufferSize) {
		hb.size -= len(v.msgs[drop].item)
		drop++
	}
	if drop > 0 {
		// A fresh array: the dropped messages are not kept alive behind
		// the ones kept.
		v.msgs = slices.Clone(v.msgs[drop:])
	}
	if changed {
		hb.publish(v)
	}
}

// wake has the waiters look again (the region's breaker opened).
func (hb *hub) wake() {
	hb.mu.Lock()
	defer hb.mu.Unlock()
	v := hb.view.Load()
	hb.publish(&hubView{started: v.started, page: v.page, next: v.next, msgs: v.msgs, final: v.final})
}

// jsonString is s as a JSON string, with <, > and & as they are (as
// Momento writes them), not escaped for HTML.
func jsonString(s string) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s)
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}

// finish ends the hub with the region's answer, for every waiter.
func (hb *hub) finish(rf *refusal) {
	hb.mu.Lock()
	v := hb.view.Load()
	hb.publish(&hubView{started: v.started, page: v.page, next: v.next, msgs: v.msgs, final: rf})
	hb.mu.Unlock()
	hb.remove()
}

// pause waits before the next attempt (at least retryAfter) and returns
// the next backoff.
func pause(ctx context.Context, backoff, retryAfter time.Duration) time.Duration {
	d := max(retryAfter, backoff/2+rand.N(backoff/2+1))
	sleep(ctx, d)
	return min(backoff*2, hubBackoffMax)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
