package momentolocal

import (
	"testing"
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
	for k, tp := range ts.byKey {
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
		if ts.byKey[m.topic.key] != m.topic {
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

// topicCount returns how many topics are kept.
func topicCount(ts *topics) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return len(ts.byKey)
}
