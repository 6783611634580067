package momentolocal

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"
)

// checkInvariants verifies that every shard's map and LRU list agree, that
// the lists are in access order and that the counters match the items.
func checkInvariants(t *testing.T, s *store) {
	t.Helper()
	var items, bytes int64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n := 0
		var prev *entry
		for e := sh.lru.oldest(); e != nil; e = newer(e) {
			if older(e) != prev {
				t.Errorf("shard %d: broken prev link at %q", i, e.k.key)
			}
			if prev != nil && prev.seq >= e.seq {
				t.Errorf("shard %d: %q (seq %d) listed after newer %q (seq %d)", i, e.k.key, e.seq, prev.k.key, prev.seq)
			}
			if sh.items.m[e.k] != e {
				t.Errorf("shard %d: listed item %q is not in the map", i, e.k.key)
			}
			n++
			bytes += e.size()
			prev = e
		}
		if sh.lru.newest() != prev {
			t.Errorf("shard %d: the newest is not the last item listed", i)
		}
		if n != len(sh.items.m) {
			t.Errorf("shard %d: %d items listed, %d in the map", i, n, len(sh.items.m))
		}
		items += int64(n)
		sh.mu.Unlock()
	}
	if got := int64(s.len()); got != items {
		t.Errorf("item count %d, but %d items stored", got, items)
	}
	if got := s.size(); got != bytes {
		t.Errorf("byte count %d, but %d bytes stored", got, bytes)
	}
	if s.memory() > s.maxBytes.Load() {
		t.Errorf("memory %d exceeds the bound %d", s.memory(), s.maxBytes.Load())
	}
}

func TestStoreAccounting(t *testing.T) {
	clk := newClock()
	s := newStore(1<<20, clk.Now)

	s.set("c", "key", []byte("12345"), time.Minute)
	s.set("d", "key", []byte("1"), time.Minute)
	if s.len() != 2 || s.size() != 3+5+3+1 {
		t.Errorf("after two sets: len %d size %d", s.len(), s.size())
	}
	s.set("c", "key", []byte("123456789"), time.Minute)
	if s.len() != 2 || s.size() != 3+9+3+1 {
		t.Errorf("after growing overwrite: len %d size %d", s.len(), s.size())
	}
	s.set("c", "key", nil, time.Minute)
	if s.size() != 3+3+1 {
		t.Errorf("after shrinking overwrite: size %d", s.size())
	}
	s.delete("c", "key")
	s.delete("c", "absent")
	if s.len() != 1 || s.size() != 3+1 {
		t.Errorf("after delete: len %d size %d", s.len(), s.size())
	}
	if got := s.memory(); got != 4+itemOverhead {
		t.Errorf("memory %d, want %d", got, 4+itemOverhead)
	}
	checkInvariants(t, s)
}

func TestStoreSweep(t *testing.T) {
	clk := newClock()
	s := newStore(1<<20, clk.Now)
	for i := range 100 {
		ttl := time.Duration(i%10+1) * time.Second
		s.set("c", fmt.Sprint(i), []byte("v"), ttl)
	}
	clk.Advance(5 * time.Second) // items with a ttl of 1s to 5s expire
	s.sweep()
	if s.len() != 50 {
		t.Errorf("after sweep: len %d, want 50", s.len())
	}
	for i := range 100 {
		_, ok := s.get("c", fmt.Sprint(i))
		if want := i%10+1 > 5; ok != want {
			t.Errorf("item %d (ttl %ds): present %v, want %v", i, i%10+1, ok, want)
		}
	}
	checkInvariants(t, s)
}

// TestStoreGlobalLRU checks against a model that eviction picks the least
// recently used item of the whole store, not merely of one shard.
func TestStoreGlobalLRU(t *testing.T) {
	const capacity = 50
	value := []byte("0123456789")
	cost := int64(4 + len(value) + itemOverhead) // keys are 4 bytes
	s := newStore(capacity*cost, newClock().Now)

	var model []string // least recently used first
	use := func(k string) {
		if i := slices.Index(model, k); i >= 0 {
			model = slices.Delete(model, i, i+1)
		}
		model = append(model, k)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for op := range 5000 {
		k := fmt.Sprintf("k%03d", rng.IntN(120))
		if rng.IntN(2) == 0 {
			s.set("c", k, value, time.Hour)
			use(k)
			if len(model) > capacity {
				model = model[1:]
			}
		} else {
			_, ok := s.get("c", k)
			want := slices.Contains(model, k)
			if ok != want {
				t.Fatalf("op %d: get %s: hit %v, want %v", op, k, ok, want)
			}
			if ok {
				use(k)
			}
		}
	}
	if s.len() != len(model) {
		t.Errorf("len %d, want %d", s.len(), len(model))
	}
	checkInvariants(t, s)
}

func TestStoreConcurrentEviction(t *testing.T) {
	s := newStore(100*(itemOverhead+64), time.Now)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 0))
			for range 5000 {
				k := fmt.Sprint(rng.IntN(500))
				switch rng.IntN(4) {
				case 0, 1:
					s.set(fmt.Sprint(w%2), k, make([]byte, rng.IntN(60)), time.Minute)
				case 2:
					if v, ok := s.get(fmt.Sprint(w%2), k); ok && len(v) >= 60 {
						t.Errorf("value of impossible length %d", len(v))
					}
				case 3:
					s.delete(fmt.Sprint(w%2), k)
				}
			}
		})
	}
	wg.Wait()
	if s.len() == 0 {
		t.Error("everything was evicted")
	}
	checkInvariants(t, s)
}

func TestSweeperStopsWhenDone(t *testing.T) {
	s := newStore(1<<20, time.Now)
	ticks := make(chan time.Time)
	done := make(chan struct{})
	sw := startSweeper(s, time.Hour, ticks, done)
	ticks <- time.Time{}
	close(done)
	select {
	case <-sw.stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("the sweeper did not stop when done was closed")
	}
	sw.close() // still safe afterwards
}

// liveHeap returns the bytes of live heap objects after a full collection.
func liveHeap() int64 {
	runtime.GC()
	runtime.GC() // a second cycle frees what the first one's finalizers let go
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// TestMemoryBound fills stores well past max_memory with items of several
// shapes and checks that the heap they hold stays within the bound, and
// not far below it: itemOverhead must be what an item really costs, not a
// guess. It logs what an item costs the heap beyond its key and value, the
// figure itemOverhead comes from; see it with -v.
func TestMemoryBound(t *testing.T) {
	const bound = 8 << 20
	for _, tc := range []struct {
		keyLen, valueLen int
	}{
		{8, 1}, // the case of issue 10: one-byte values, 1.9x the bound in heap
		{8, 0},
		{40, 100},
		{16, 1000},
		{16, 20000},
	} {
		t.Run(fmt.Sprintf("key %d value %d", tc.keyLen, tc.valueLen), func(t *testing.T) {
			before := liveHeap()
			s := newStore(bound, time.Now)
			// Three times what fits, so the maps reach their size at the
			// bound and eviction churns through them.
			perItem := int64(tc.keyLen+tc.valueLen) + itemOverhead
			n := int(3 * bound / perItem)
			key := make([]byte, tc.keyLen)
			for i := range n {
				copy(key, fmt.Sprintf("%0*d", tc.keyLen, i))
				// As readBody reads a value of known length.
				value := slices.Grow([]byte(nil), tc.valueLen)[:tc.valueLen]
				s.set("cache", string(key), value, time.Hour)
			}
			heap := liveHeap() - before
			items := int64(s.len())
			overhead := float64(heap-s.size()) / float64(items)
			t.Logf("%d items: heap %d bytes for a bound of %d (%.2f), %.0f bytes per item beyond key and value",
				items, heap, int64(bound), float64(heap)/bound, overhead)
			if s.memory() > bound {
				t.Errorf("accounted memory %d exceeds the bound %d", s.memory(), bound)
			}
			if heap > bound*103/100 {
				t.Errorf("the items hold %d bytes of heap, more than the bound %d by over 3%%", heap, bound)
			}
			if heap < bound*85/100 {
				t.Errorf("the items hold %d bytes of heap, less than 85%% of the bound %d: the accounting overestimates", heap, bound)
			}
			runtime.KeepAlive(s)
		})
	}
}
