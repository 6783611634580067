package momentolocal

import (
	"fmt"
	"math/rand/v2"
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
			if sh.items[e.k] != e {
				t.Errorf("shard %d: listed item %q is not in the map", i, e.k.key)
			}
			n++
			bytes += e.size()
			prev = e
		}
		if sh.lru.newest() != prev {
			t.Errorf("shard %d: the newest is not the last item listed", i)
		}
		if n != len(sh.items) {
			t.Errorf("shard %d: %d items listed, %d in the map", i, n, len(sh.items))
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
	if s.memory() > s.maxBytes {
		t.Errorf("memory %d exceeds the bound %d", s.memory(), s.maxBytes)
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
