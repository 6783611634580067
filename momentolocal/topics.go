package momentolocal

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// maxSubscribeItems bounds how many messages one subscribe answer
	// carries; a subscriber further behind gets the rest on its next poll.
	maxSubscribeItems = 100

	// messageOverhead is what a buffered message costs beyond its encoded
	// value's buffer: the message struct (64 bytes) and its slot in the
	// topic's buffer, which append grows to twice what it holds.
	// TestTopicMemoryBound measures it with runtime.MemStats.
	messageOverhead = 80

	// topicOverhead is what a topic costs beyond its names: the topic
	// struct, its map slot and its names' rounding up to a size class, as
	// TestTopicMemoryBound measures it.
	topicOverhead = 224
)

// errReleased is what a waiting subscriber gets when its handler lets it
// go (its config is being unloaded) or its topic's cache is dropped: it is
// answered an empty page and polls again, reaching the config in force.
var errReleased = errors.New("momento_local released the subscriber")

// topics holds every topic of a handler and the messages they buffer.
//
// One lock guards them all: topic traffic is light (Momento allows 10
// publishes a second) and it keeps the publish order across topics, which
// eviction needs, simple.
type topics struct {
	store    *store // whose bound and access sequence messages share
	capacity int    // messages kept per topic: topic_buffer
	now      func() time.Time
	onWait   func() // see hooks.onWait; read under mu, so tests may set it late

	// memory is what topics and their messages count against max_memory.
	// It changes only under mu; it is atomic so the store can read it
	// without taking mu.
	memory atomic.Int64

	mu        sync.Mutex
	byKey     shrinkingMap[topicKey, *topic]
	published list[message, *message] // every buffered message, in publish order
	lastPage  uint64
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
	gone     bool // its cache was dropped: waiters are released
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
	order links[message] // on topics.published
}

func (m *message) links() *links[message] { return &m.order }

// cost is what the message counts against max_memory: its buffer, by
// capacity (see encodeValue), and messageOverhead.
func (m *message) cost() int64 { return int64(cap(m.value)) + messageOverhead }

func newTopics(s *store, capacity int, now func() time.Time, onWait func()) *topics {
	ts := &topics{
		store:    s,
		capacity: capacity,
		now:      now,
		onWait:   onWait,
		byKey:    newShrinkingMap[topicKey, *topic](),
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
	m := &message{seq: t.next, lru: ts.store.seq.Add(1), value: value, topic: t}
	t.next++
	t.messages = append(t.messages, m)
	ts.published.pushBack(m)
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
// It returns ctx's error when ctx ends first, and errReleased when release
// is closed first (or was already) or the topic's cache is dropped.
func (ts *topics) subscribe(ctx context.Context, release <-chan struct{}, cache, name string, from, page uint64) (answer, error) {
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
		select {
		case <-release:
			ts.forgetIfIdle(t)
			ts.mu.Unlock()
			return answer{}, errReleased
		default:
		}
		if t.ready == nil {
			t.ready = make(chan struct{})
		}
		ready := t.ready
		t.waiters++
		onWait := ts.onWait
		ts.mu.Unlock()
		if ts.store.overBound() { // the topic may be new
			ts.store.evict()
		}
		if onWait != nil {
			onWait()
		}
		var err error
		select {
		case <-ready:
		case <-ctx.Done():
			err = ctx.Err()
		case <-release:
			err = errReleased
		}
		ts.mu.Lock()
		t.waiters--
		if err == nil && t.gone {
			err = errReleased
		}
		if err != nil {
			ts.forgetIfIdle(t)
			ts.mu.Unlock()
			return answer{}, err
		}
	}
}

// dropCaches forgets the topics of the caches for which gone returns
// true, with their messages, and releases their waiting subscribers.
func (ts *topics) dropCaches(gone func(cache string) bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, t := range ts.byKey.m {
		if gone(t.key.cache) {
			ts.forget(t)
		}
	}
}

// clear forgets every topic.
func (ts *topics) clear() {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	for _, t := range ts.byKey.m {
		ts.forget(t)
	}
	ts.byKey = newShrinkingMap[topicKey, *topic]()
}

// setCapacity changes topic_buffer, dropping what each topic holds beyond
// it, oldest first; its subscribers get a discontinuity, as for any
// message dropped.
func (ts *topics) setCapacity(capacity int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.capacity = capacity
	for _, t := range ts.byKey.m {
		for len(t.messages) > capacity {
			ts.drop(t.messages[0])
		}
	}
}

// count returns how many topics are kept.
func (ts *topics) count() int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.byKey.m)
}

// oldestMessage returns the store access sequence of the earliest published
// message still buffered, for eviction to weigh against the items.
func (ts *topics) oldestMessage() (uint64, bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	m := ts.published.oldest()
	if m == nil {
		return 0, false
	}
	return m.lru, true
}

// dropOldestMessage drops the earliest published message still buffered.
func (ts *topics) dropOldestMessage() {
	ts.mu.Lock()
	if m := ts.published.oldest(); m != nil {
		ts.drop(m)
		ts.forgetIfIdle(m.topic)
	}
	ts.mu.Unlock()
}

// The helpers below require ts.mu to be held.

// topicFor returns a topic, creating it with a new page if need be.
func (ts *topics) topicFor(cache, name string) *topic {
	if t := ts.byKey.m[topicKey{cache, name}]; t != nil {
		return t
	}
	page := uint64(max(ts.now().Unix(), 1))
	if page <= ts.lastPage {
		page = ts.lastPage + 1
	}
	ts.lastPage = page
	// Clone so that the topic does not pin the request's URL.
	t := &topic{key: topicKey{strings.Clone(cache), strings.Clone(name)}, page: page}
	ts.byKey.m[t.key] = t
	ts.memory.Add(t.cost())
	return t
}

// forgetIfIdle drops a topic that has no messages and no waiting
// subscribers: nobody would miss it, and a client must not be able to make
// topics without bound. A subscriber that comes back finds a new page.
func (ts *topics) forgetIfIdle(t *topic) {
	if len(t.messages) == 0 && t.waiters == 0 && ts.byKey.m[t.key] == t {
		ts.byKey.delete(t.key)
		ts.memory.Add(-t.cost())
	}
}

// forget drops a topic with its messages, whatever it holds, and wakes its
// waiting subscribers, who see it gone.
func (ts *topics) forget(t *topic) {
	for len(t.messages) > 0 {
		ts.drop(t.messages[0])
	}
	t.gone = true
	if t.ready != nil {
		close(t.ready)
		t.ready = nil
	}
	ts.byKey.delete(t.key)
	ts.memory.Add(-t.cost())
}

// drop removes m, which must be the oldest message of its topic.
func (ts *topics) drop(m *message) {
	t := m.topic
	t.messages[0] = nil
	t.messages = t.messages[1:]
	if len(t.messages) == 0 {
		t.messages = nil // let the buffer's array go
	}
	ts.published.remove(m)
	ts.memory.Add(-m.cost())
}
