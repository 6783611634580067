package momentolocal

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.uber.org/zap"
)

const (
	// maxSubscribeItems bounds how many messages one subscribe answer
	// carries; a subscriber further behind gets the rest on its next poll.
	maxSubscribeItems = 100

	// messageOverhead estimates what a buffered message costs beyond its
	// encoded value: the message struct and its slot in the topic's buffer.
	messageOverhead = 96

	// topicOverhead estimates what a topic costs beyond its names: the
	// topic struct and its map slot.
	topicOverhead = 192
)

// errClosed is what subscribers waiting when the handler closes get.
var errClosed = errors.New("momento_local is shutting down")

// serveTopic answers POST (publish) and GET (subscribe) on
// /topics/{cache}/{topic}; path is what follows /topics/.
func (h *Handler) serveTopic(w http.ResponseWriter, r *http.Request, path string) {
	q, ok := h.admit(w, r)
	if !ok {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed on /topics/: use POST to publish or GET to subscribe")
		return
	}
	cache, topic, hasTopic := strings.Cut(path, "/")
	if problem := checkName("cache", cache); problem != "" {
		writeError(w, http.StatusBadRequest, "invalid cache name: "+problem)
		return
	}
	if !hasTopic {
		writeError(w, http.StatusBadRequest, "missing topic name: use /topics/{cacheName}/{topicName}")
		return
	}
	if problem := checkName("topic", topic); problem != "" {
		writeError(w, http.StatusBadRequest, "invalid topic name: "+problem)
		return
	}
	var from, page uint64
	var binary bool
	var problem string
	if r.Method == http.MethodGet {
		if from, problem = wholeNumber("sequence_number", q.sequenceNumber, q.hasSeqNumber); problem == "" {
			page, problem = wholeNumber("sequence_page", q.sequencePage, q.hasSeqPage)
		}
	} else {
		binary, problem = messageKind(r.Header.Get("Content-Type"))
	}
	if problem != "" {
		writeError(w, http.StatusBadRequest, problem)
		return
	}
	if !h.cacheExists(w, cache) {
		return
	}

	if r.Method == http.MethodPost {
		h.publish(w, r, cache, topic, binary)
		return
	}
	a, err := h.topics.subscribe(r.Context(), cache, topic, from, page)
	if errors.Is(err, errClosed) {
		// The config is being unloaded (a reload, say): an empty page, and
		// the client polls again, reaching the new config. Not a 503: a
		// gateway in front would count that against the region.
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"items":[]}`)
		return
	}
	if err != nil {
		return // the client has gone: there is nobody to answer
	}
	body := a.appendJSON(nil)
	vals := []string{"application/json", strconv.Itoa(len(body))}
	hdr := w.Header()
	hdr["Content-Type"] = vals[0:1:1]
	hdr["Content-Length"] = vals[1:2:2]
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// publish reads a message and publishes it, or nothing when the body is too
// large or cannot be read whole.
func (h *Handler) publish(w http.ResponseWriter, r *http.Request, cache, topic string, binary bool) {
	body, status, err := readBody(r, h.MaxMessageSize, func() error {
		return fmt.Errorf("message too large: it exceeds max_message_size (%d bytes); nothing was published", h.MaxMessageSize)
	})
	if err != nil {
		h.logger.Debug("not publishing", zap.String("cache", cache), zap.String("topic", topic), zap.Error(err))
		writeError(w, status, err.Error())
		return
	}
	if !binary && !utf8.Valid(body) {
		writeError(w, http.StatusBadRequest, "a text/plain message must be UTF-8: publish other bytes as application/octet-stream")
		return
	}
	value := encodeValue(body, binary)
	if cost := int64(len(value)) + messageOverhead + topicOverhead + int64(len(cache)+len(topic)); cost > h.MaxMemory {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"message too large: it would take %d bytes of memory, more than max_memory (%d bytes); nothing was published", cost, h.MaxMemory))
		return
	}
	h.topics.publish(cache, topic, value)
	w.WriteHeader(http.StatusNoContent)
}

// messageKind tells from a publish's Content-Type whether the message is
// binary, or what is wrong with it.
func messageKind(contentType string) (binary bool, problem string) {
	const use = "publish text as text/plain (UTF-8) or bytes as application/octet-stream"
	if contentType == "" {
		return false, "missing Content-Type: " + use
	}
	mediaType, params, err := mime.ParseMediaType(contentType)
	if err != nil {
		return false, fmt.Sprintf("malformed Content-Type %q: %v; %s", contentType, err, use)
	}
	switch mediaType {
	case "text/plain":
		if cs, ok := params["charset"]; ok && !strings.EqualFold(cs, "utf-8") && !strings.EqualFold(cs, "us-ascii") {
			return false, fmt.Sprintf("Content-Type %q: text messages must be UTF-8; publish other bytes as application/octet-stream", contentType)
		}
		return false, ""
	case "application/octet-stream":
		return true, ""
	}
	return false, fmt.Sprintf("Content-Type %q cannot be published: %s", contentType, use)
}

// wholeNumber parses the value of a query parameter that is a non-negative
// integer, 0 when absent.
func wholeNumber(name, value string, given bool) (uint64, string) {
	if !given {
		return 0, ""
	}
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, name + " must be a whole number, 0 or more"
	}
	return n, ""
}

// encodeValue returns the JSON a subscriber receives for a message:
// {"text":"…"} or {"binary":"<standard base64>"}. Messages are kept so
// encoded, which spares re-encoding them for every subscriber.
func encodeValue(body []byte, binary bool) []byte {
	if binary {
		const pre, post = `{"binary":"`, `"}`
		v := make([]byte, 0, len(pre)+base64.StdEncoding.EncodedLen(len(body))+len(post))
		v = append(v, pre...)
		v = base64.StdEncoding.AppendEncode(v, body)
		return append(v, post...)
	}
	v := make([]byte, 0, len(body)+len(`{"text":""}`)+8)
	v = append(v, `{"text":`...)
	v = appendJSONString(v, body)
	v = append(v, '}')
	return slices.Clip(v)
}

// appendJSONString appends s, which is valid UTF-8, as a JSON string.
func appendJSONString(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i, c := range s {
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// topics holds every topic of a handler and the messages they buffer.
//
// One lock guards them all: topic traffic is light (Momento allows 10
// publishes a second) and it keeps the publish order across topics, which
// eviction needs, simple.
type topics struct {
	store    *store // whose bound and access sequence messages share
	capacity int    // messages kept per topic: topic_buffer
	now      func() time.Time
	onWait   func() // see Handler.onWait

	// memory is what topics and their messages count against max_memory.
	// It changes only under mu; it is atomic so the store can read it
	// without taking mu.
	memory atomic.Int64

	mu       sync.Mutex
	byKey    map[topicKey]*topic
	oldest   *message // the earliest published message still buffered
	newest   *message
	lastPage uint64
	closed   chan struct{} // closed by close, to release waiting subscribers
	isClosed bool
}

type topicKey struct {
	cache string
	topic string
}

// topic is one topic's state, guarded by topics.mu.
type topic struct {
	key      topicKey
	page     uint64
	next     uint64     // the sequence number the next message gets
	messages []*message // buffered, oldest first, numbered up to next-1
	waiters  int        // subscribers waiting for message next
	ready    chan struct{}
}

// first returns the number of the oldest buffered message, or next when
// there is none.
func (t *topic) first() uint64 { return t.next - uint64(len(t.messages)) }

func (t *topic) cost() int64 { return int64(len(t.key.cache)+len(t.key.topic)) + topicOverhead }

// message is a published message. Only its list links change after it is
// published, so subscribers may read the rest without the lock.
type message struct {
	seq   uint64 // its topic sequence number
	lru   uint64 // the store's access sequence when it was published
	value []byte // its JSON, see encodeValue
	topic *topic
	older *message // in publish order across all topics
	newer *message
}

func (m *message) cost() int64 { return int64(len(m.value)) + messageOverhead }

func newTopics(s *store, capacity int, now func() time.Time, onWait func()) *topics {
	ts := &topics{
		store:    s,
		capacity: capacity,
		now:      now,
		onWait:   onWait,
		byKey:    make(map[topicKey]*topic),
		closed:   make(chan struct{}),
	}
	s.topics = ts
	return ts
}

// publish appends a message, whose value the topics keep, to a topic and
// wakes the topic's waiting subscribers.
func (ts *topics) publish(cache, name string, value []byte) {
	ts.mu.Lock()
	t := ts.topicFor(cache, name)
	if len(t.messages) == ts.capacity {
		ts.drop(t.messages[0])
	}
	m := &message{seq: t.next, lru: ts.store.seq.Add(1), value: value, topic: t, older: ts.newest}
	t.next++
	t.messages = append(t.messages, m)
	if ts.newest != nil {
		ts.newest.newer = m
	} else {
		ts.oldest = m
	}
	ts.newest = m
	ts.memory.Add(m.cost())
	if t.ready != nil {
		close(t.ready)
		t.ready = nil
	}
	ts.mu.Unlock()
	if ts.store.overBound() {
		ts.store.evict()
	}
}

// answer is what a subscribe answers: messages, after a discontinuity when
// gap is set.
type answer struct {
	gap      bool
	last     uint64 // the discontinuity's last_topic_sequence
	next     uint64 // its new_topic_sequence
	page     uint64 // its new_sequence_page, and every item's sequence_page
	messages []*message
}

// subscribe returns what a subscriber that asks for message from of
// sequence page page gets, waiting until there is something when need be.
// It returns ctx's error when ctx ends first, and errClosed when the topics
// are closed first.
func (ts *topics) subscribe(ctx context.Context, cache, name string, from, page uint64) (answer, error) {
	ts.mu.Lock()
	t := ts.topicFor(cache, name)
	// last is the client's last message, as far as unsigned numbers can say.
	last := from - min(from, 1)
	want, gap := from, false
	switch {
	case page != 0 && page != t.page:
		want, gap = t.first(), true
	case from > t.next:
		a := answer{gap: true, last: last, next: t.next, page: t.page}
		ts.forgetIfIdle(t)
		ts.mu.Unlock()
		return a, nil
	}
	for {
		if first := t.first(); want < first {
			want, gap = first, true
		}
		if want < t.next {
			i := int(want - t.first())
			a := answer{
				gap:      gap,
				last:     last,
				next:     want,
				page:     t.page,
				messages: slices.Clone(t.messages[i:min(len(t.messages), i+maxSubscribeItems)]),
			}
			ts.mu.Unlock()
			return a, nil
		}
		if ts.isClosed {
			ts.forgetIfIdle(t)
			ts.mu.Unlock()
			return answer{}, errClosed
		}
		if t.ready == nil {
			t.ready = make(chan struct{})
		}
		ready := t.ready
		t.waiters++
		ts.mu.Unlock()
		if ts.store.overBound() { // the topic may be new
			ts.store.evict()
		}
		if ts.onWait != nil {
			ts.onWait()
		}
		var err error
		select {
		case <-ready:
		case <-ctx.Done():
			err = ctx.Err()
		case <-ts.closed:
			err = errClosed
		}
		ts.mu.Lock()
		t.waiters--
		if err != nil {
			ts.forgetIfIdle(t)
			ts.mu.Unlock()
			return answer{}, err
		}
	}
}

// close releases every waiting subscriber, and any later one that would
// wait, with errClosed.
func (ts *topics) close() {
	ts.mu.Lock()
	if !ts.isClosed {
		ts.isClosed = true
		close(ts.closed)
	}
	ts.mu.Unlock()
}

// oldestMessage returns the store access sequence of the earliest published
// message still buffered, for eviction to weigh against the items.
func (ts *topics) oldestMessage() (uint64, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.oldest == nil {
		return 0, false
	}
	return ts.oldest.lru, true
}

// dropOldestMessage drops the earliest published message still buffered.
func (ts *topics) dropOldestMessage() {
	ts.mu.Lock()
	if m := ts.oldest; m != nil {
		ts.drop(m)
		ts.forgetIfIdle(m.topic)
	}
	ts.mu.Unlock()
}

// The helpers below require ts.mu to be held.

// topicFor returns a topic, creating it with a new page if need be.
func (ts *topics) topicFor(cache, name string) *topic {
	if t := ts.byKey[topicKey{cache, name}]; t != nil {
		return t
	}
	page := uint64(max(ts.now().Unix(), 1))
	if page <= ts.lastPage {
		page = ts.lastPage + 1
	}
	ts.lastPage = page
	// Clone so that the topic does not pin the request's URL.
	t := &topic{key: topicKey{strings.Clone(cache), strings.Clone(name)}, page: page}
	ts.byKey[t.key] = t
	ts.memory.Add(t.cost())
	return t
}

// forgetIfIdle drops a topic that has no messages and no waiting
// subscribers: nobody would miss it, and a client must not be able to make
// topics without bound. A subscriber that comes back finds a new page.
func (ts *topics) forgetIfIdle(t *topic) {
	if len(t.messages) == 0 && t.waiters == 0 && ts.byKey[t.key] == t {
		delete(ts.byKey, t.key)
		ts.memory.Add(-t.cost())
	}
}

// drop removes m, which must be the oldest message of its topic.
func (ts *topics) drop(m *message) {
	t := m.topic
	t.messages[0] = nil
	t.messages = t.messages[1:]
	if len(t.messages) == 0 {
		t.messages = nil // let the buffer's array go
	}
	if m.older != nil {
		m.older.newer = m.newer
	} else {
		ts.oldest = m.newer
	}
	if m.newer != nil {
		m.newer.older = m.older
	} else {
		ts.newest = m.older
	}
	m.older, m.newer = nil, nil
	ts.memory.Add(-m.cost())
}

// appendJSON appends the answer in Momento's shape:
//
//	{"items":[{"discontinuity":{…}},{"item":{"topic_sequence_number":0,"sequence_page":3,"value":{"text":"hi"}}}]}
func (a *answer) appendJSON(dst []byte) []byte {
	size := len(`{"items":[]}`) + 100
	for _, m := range a.messages {
		size += len(m.value) + 100
	}
	dst = slices.Grow(dst, size)
	dst = append(dst, `{"items":[`...)
	if a.gap {
		dst = append(dst, `{"discontinuity":{"last_topic_sequence":`...)
		dst = strconv.AppendUint(dst, a.last, 10)
		dst = append(dst, `,"new_topic_sequence":`...)
		dst = strconv.AppendUint(dst, a.next, 10)
		dst = append(dst, `,"new_sequence_page":`...)
		dst = strconv.AppendUint(dst, a.page, 10)
		dst = append(dst, `}}`...)
	}
	for i, m := range a.messages {
		if i > 0 || a.gap {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"item":{"topic_sequence_number":`...)
		dst = strconv.AppendUint(dst, m.seq, 10)
		dst = append(dst, `,"sequence_page":`...)
		dst = strconv.AppendUint(dst, a.page, 10)
		dst = append(dst, `,"value":`...)
		dst = append(dst, m.value...)
		dst = append(dst, `}}`...)
	}
	return append(dst, `]}`...)
}
