package momentolocal

import (
	"hash/maphash"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// numShards spreads items over independent locks so that concurrent
	// requests for different keys rarely wait for each other. A power of
	// two, so that picking a shard is a mask.
	numShards = 32

	// itemOverhead is what one item costs the heap beyond its key and its
	// value's buffer: the entry with its LRU links (96 bytes), its map
	// slot (41 bytes at a load between 7/16 and 7/8, see shrinkingMap) and
	// its key's rounding up to a size class. TestMemoryBound measures it
	// with runtime.MemStats: about 180 to 200 bytes for small items. The
	// higher figure is used, so that max_memory bounds the live heap.
	itemOverhead = 200
)

// store is the in-memory cache: items keyed by cache name and key, each with
// an expiry, bounded in memory by evicting the least recently used items.
//
// Each shard keeps its own LRU list ordered by a global access sequence, so
// the globally least recently used item is always the oldest of the shard
// lists' fronts; eviction compares those and so stays exact across shards.
//
// Topic messages share the bound: each takes a number from the same access
// sequence when published, so eviction can weigh the earliest message still
// buffered against the least recently used item and drop the older.
type store struct {
	shards   [numShards]shard
	seed     maphash.Seed
	now      func() time.Time
	maxBytes atomic.Int64 // bound on memory(), max_memory
	topics   *topics      // nil when no topics share the bound

	bytes atomic.Int64  // key and value bytes stored
	cost  atomic.Int64  // what the items cost the heap, see entry.cost
	items atomic.Int64  // number of items stored
	seq   atomic.Uint64 // access sequence: higher is more recently used

	// evictMu serialises eviction, so that concurrent writers that all
	// see the store over its bound do not each evict an item for it.
	evictMu sync.Mutex
}

// shard is one lock's share of the items, with their LRU list: least
// recently used at the front.
type shard struct {
	mu    sync.Mutex
	items shrinkingMap[itemKey, *entry]
	lru   list[entry, *entry]

	// Pad to a cache line of its own so that locking one shard does not
	// slow down neighbours that share the line.
	_ [64]byte
}

// itemKey addresses an item. Lookups build it from strings that point into
// the request, so a hit allocates nothing.
type itemKey struct {
	cache string
	key   string
}

// entry is a stored item. Its fields are few and small on purpose: with a
// map slot, it is most of what a small item costs (see itemOverhead).
type entry struct {
	k       itemKey
	value   []byte // never modified once stored, so readers may use it unlocked
	expires int64  // Unix nanoseconds: 8 bytes where a time.Time takes 24
	seq     uint64 // the store's access sequence when it was last used
	lru     links[entry]
}

func (e *entry) links() *links[entry] { return &e.lru }

// size is the key and value bytes, as Bytes reports them.
func (e *entry) size() int64 { return int64(len(e.k.key) + len(e.value)) }

// cost is what the item counts against max_memory. The value counts by its
// capacity, which readBody makes the size class the allocator really gave
// it, so a 1025-byte value counts as the 1152 bytes it takes.
func (e *entry) cost() int64 { return int64(len(e.k.key)+cap(e.value)) + itemOverhead }

func newStore(maxBytes int64, now func() time.Time) *store {
	s := &store{seed: maphash.MakeSeed(), now: now}
	s.maxBytes.Store(maxBytes)
	for i := range s.shards {
		s.shards[i].items = newShrinkingMap[itemKey, *entry]()
	}
	return s
}

// expiry returns when an item set now for ttl expires, in Unix nanoseconds,
// saturating rather than overflowing for the longest ttl_seconds.
func expiry(now time.Time, ttl time.Duration) int64 {
	n := now.UnixNano()
	if int64(ttl) > math.MaxInt64-n {
		return math.MaxInt64
	}
	return n + int64(ttl)
}

// shardFor hashes only the key: the same key in different caches sharing a
// shard costs nothing, and it saves hashing the cache name on every request.
func (s *store) shardFor(key string) *shard {
	return &s.shards[maphash.String(s.seed, key)&(numShards-1)]
}

// get returns the value of an unexpired item and marks it recently used.
// The returned slice must not be modified.
func (s *store) get(cache, key string) ([]byte, bool) {
	now := s.now().UnixNano()
	sh := s.shardFor(key)
	sh.mu.Lock()
	e := sh.items.m[itemKey{cache, key}]
	if e == nil {
		sh.mu.Unlock()
		return nil, false
	}
	if now >= e.expires {
		s.remove(sh, e)
		sh.mu.Unlock()
		return nil, false
	}
	s.touch(sh, e)
	v := e.value
	sh.mu.Unlock()
	return v, true
}

// set stores value under cache and key for ttl, replacing any item there.
// The store keeps value itself: the caller must not modify it afterwards.
func (s *store) set(cache, key string, value []byte, ttl time.Duration) {
	expires := expiry(s.now(), ttl)
	sh := s.shardFor(key)
	sh.mu.Lock()
	if e := sh.items.m[itemKey{cache, key}]; e != nil {
		s.bytes.Add(int64(len(value) - len(e.value)))
		s.cost.Add(int64(cap(value) - cap(e.value)))
		e.value = value
		e.expires = expires
		s.touch(sh, e)
	} else {
		// Clone so that the stored item does not pin the request's URL.
		// Items of one cache share one copy of its name: the newest item
		// of the shard is most often of the same cache.
		c := cache
		if n := sh.lru.newest(); n != nil && n.k.cache == cache {
			c = n.k.cache
		} else {
			c = strings.Clone(cache)
		}
		e = &entry{k: itemKey{c, strings.Clone(key)}, value: value, expires: expires}
		sh.items.m[e.k] = e
		s.add(sh, e)
		s.bytes.Add(e.size())
		s.cost.Add(e.cost())
		s.items.Add(1)
	}
	sh.mu.Unlock()
	if s.overBound() {
		s.evict()
	}
}

// delete removes an item; deleting an absent item is not an error.
func (s *store) delete(cache, key string) {
	sh := s.shardFor(key)
	sh.mu.Lock()
	if e := sh.items.m[itemKey{cache, key}]; e != nil {
		s.remove(sh, e)
	}
	sh.mu.Unlock()
}

// sweep removes every item that has expired by now. Lazy expiry on access
// keeps answers right; sweeping gives back the memory of items nobody asks
// for again.
func (s *store) sweep() {
	now := s.now().UnixNano()
	s.dropItems(func(e *entry) bool { return now >= e.expires })
}

// sweeper is the goroutine that sweeps a store on every tick until it is
// stopped, either by close or by done (a Caddy context ending).
type sweeper struct {
	stop     chan struct{}
	stopped  chan struct{}
	stopOnce sync.Once
}

// startSweeper sweeps s every interval, or on every value from ticks when
// that is not nil (tests tick by hand).
func startSweeper(s *store, interval time.Duration, ticks <-chan time.Time, done <-chan struct{}) *sweeper {
	sw := &sweeper{stop: make(chan struct{}), stopped: make(chan struct{})}
	var ticker *time.Ticker
	if ticks == nil {
		ticker = time.NewTicker(interval)
		ticks = ticker.C
	}
	go func() {
		defer close(sw.stopped)
		if ticker != nil {
			defer ticker.Stop()
		}
		for {
			select {
			case <-ticks:
				s.sweep()
			case <-sw.stop:
				return
			case <-done:
				return
			}
		}
	}()
	return sw
}

// close stops the goroutine and waits for it to end; it may be called
// more than once.
func (sw *sweeper) close() {
	sw.stopOnce.Do(func() { close(sw.stop) })
	<-sw.stopped
}

// dropItems removes every item for which drop returns true.
func (s *store) dropItems(drop func(e *entry) bool) {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, e := range sh.items.m {
			if drop(e) {
				s.remove(sh, e)
			}
		}
		sh.mu.Unlock()
	}
}

// clear removes every item and gives back the maps' memory.
func (s *store) clear() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for _, e := range sh.items.m {
			s.remove(sh, e)
		}
		sh.items = newShrinkingMap[itemKey, *entry]()
		sh.mu.Unlock()
	}
}

// setBound changes max_memory, evicting at once if the store is over it.
func (s *store) setBound(maxBytes int64) {
	s.maxBytes.Store(maxBytes)
	if s.overBound() {
		s.evict()
	}
}

func (s *store) len() int    { return int(s.items.Load()) }
func (s *store) size() int64 { return s.bytes.Load() }

// memory is what counts against the bound, topic messages included.
func (s *store) memory() int64 {
	m := s.cost.Load()
	if s.topics != nil {
		m += s.topics.memory.Load()
	}
	return m
}

func (s *store) overBound() bool { return s.memory() > s.maxBytes.Load() }

// evict removes least recently used items, and topic messages older than
// them, until the store is within its bound. Shards and topics are locked
// one at a time, never two at once.
func (s *store) evict() {
	s.evictMu.Lock()
	defer s.evictMu.Unlock()
	for s.overBound() {
		var oldest *shard
		var oldestSeq uint64
		for i := range s.shards {
			sh := &s.shards[i]
			sh.mu.Lock()
			if e := sh.lru.oldest(); e != nil && (oldest == nil || e.seq < oldestSeq) {
				oldest, oldestSeq = sh, e.seq
			}
			sh.mu.Unlock()
		}
		if s.topics != nil {
			if seq, ok := s.topics.oldestMessage(); ok && (oldest == nil || seq < oldestSeq) {
				s.topics.dropOldestMessage()
				continue
			}
		}
		if oldest == nil {
			return // what is left (topics with waiting subscribers) cannot be evicted
		}
		// The front may have been used or removed since it was seen; then
		// this evicts a slightly newer item, which only bends LRU order
		// under a race and still makes progress.
		oldest.mu.Lock()
		if e := oldest.lru.oldest(); e != nil {
			s.remove(oldest, e)
		}
		oldest.mu.Unlock()
	}
}

// The helpers below require sh.mu to be held.

// touch marks e as the most recently used item.
func (s *store) touch(sh *shard, e *entry) {
	e.seq = s.seq.Add(1)
	sh.lru.moveToBack(e)
}

// add puts a new item, already in sh.items, on the LRU list.
func (s *store) add(sh *shard, e *entry) {
	e.seq = s.seq.Add(1)
	sh.lru.pushBack(e)
}

func (s *store) remove(sh *shard, e *entry) {
	sh.items.delete(e.k)
	sh.lru.remove(e)
	s.bytes.Add(-e.size())
	s.cost.Add(-e.cost())
	s.items.Add(-1)
}
