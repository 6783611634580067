package momentolocal

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"
)

// checkTopics verifies the topics' bookkeeping: each topic's buffer is
// numbered without holes up to its next number, the publish-order list
// holds exactly the buffered messages in order, nothing idle is kept and
// the memory count matches.
func checkTopics(t *testing.T, ts *topics) {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	var memory int64
	buffered := 0
	for k, tp := range ts.byKey.m {
		if tp.key != k {
			t.Errorf("topic %v filed under %v", tp.key, k)
		}
		if len(tp.messages) == 0 && tp.waiters == 0 {
			t.Errorf("topic %v is idle but kept", k)
		}
		if len(tp.messages) > ts.capacity {
			t.Errorf("topic %v holds %d messages, more than %d", k, len(tp.messages), ts.capacity)
		}
		for i, m := range tp.messages {
			if m.topic != tp || m.seq != tp.first()+uint64(i) {
				t.Errorf("topic %v: message %d numbered %d, want %d", k, i, m.seq, tp.first()+uint64(i))
			}
			memory += m.cost()
		}
		buffered += len(tp.messages)
		memory += tp.cost()
	}
	listed := 0
	var prev *message
	for m := ts.published.oldest(); m != nil; m = newer(m) {
		if older(m) != prev {
			t.Errorf("broken link at message %d", m.seq)
		}
		if prev != nil && prev.lru >= m.lru {
			t.Errorf("publish order broken: %d listed after %d", m.lru, prev.lru)
		}
		if ts.byKey.m[m.topic.key] != m.topic {
			t.Errorf("listed message %d of a forgotten topic", m.seq)
		}
		prev = m
		listed++
	}
	if ts.published.newest() != prev {
		t.Error("newest is not the last listed message")
	}
	if listed != buffered {
		t.Errorf("%d messages listed, %d buffered", listed, buffered)
	}
	if got := ts.memory.Load(); got != memory {
		t.Errorf("memory count %d, want %d", got, memory)
	}
}

// TestTopicMemoryBound is TestMemoryBound for topics: publishes past
// max_memory, to one topic (messages dominate) and to a topic each (topics
// dominate), and checks the heap they hold against the bound.
func TestTopicMemoryBound(t *testing.T) {
	const bound = 4 << 20
	for _, tc := range []struct {
		name   string
		topics int
		body   int
	}{
		{"one topic, 10-byte messages", 1, 10},
		{"one topic, 1000-byte messages", 1, 1000},
		{"a topic for each 1-byte message", 1 << 30, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := liveHeap()
			s := newStore(bound, time.Now)
			ts := newTopics(s, 1<<20, time.Now, nil)
			body := bytes.Repeat([]byte("m"), tc.body)
			n := 3 * bound / (tc.body + messageOverhead)
			if tc.topics > 1 {
				n = 3 * bound / (tc.body + messageOverhead + topicOverhead)
			}
			for i := range n {
				ts.publish("cache", fmt.Sprintf("topic-%08d", i%tc.topics), encodeValue(body, false))
			}
			heap := liveHeap() - before
			t.Logf("%d topics: heap %d bytes for a bound of %d (%.2f)", ts.count(), heap, int64(bound), float64(heap)/bound)
			if heap > bound*103/100 {
				t.Errorf("the topics hold %d bytes of heap, more than the bound %d by over 3%%", heap, bound)
			}
			if heap < bound*75/100 {
				t.Errorf("the topics hold %d bytes of heap, less than 75%% of the bound %d: the accounting overestimates", heap, bound)
			}
			checkTopics(t, ts)
			runtime.KeepAlive(ts)
		})
	}
}
