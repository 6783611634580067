package momento

import (
	"cmp"
	"context"
	"errors"
	"hash/maphash"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/maypok86/otter/v2"
)

// Reads multiply the region's read budget (Momento admits 100 operations a
// second per region by default): concurrent GETs of one item share one
// upstream call (coalescing, on by default), a local cache answers hot
// reads without the region (local_cache, opt-in), and when the region
// fails, the cache can keep answering, marked stale (stale_if_error).
// Writes through the gateway invalidate what they change before they are
// acknowledged, so a client always reads its own writes.

// LocalCacheConfig is a handler's local read cache.
type LocalCacheConfig struct {
	// How old a value may be when it is answered from the cache without
	// asking the region. Required. A write made through another gateway,
	// or straight to Momento, shows within this long.
	MaxAge caddy.Duration `json:"max_age"`

	// The memory the cache may hold, values and keys. Default: 64 MiB.
	MaxSize int64 `json:"max_size,omitempty"`

	// When the region fails (5xx, no answer in time, unreachable, breaker
	// open), a value cached up to this long ago is answered instead,
	// marked stale (Age and Cache-Status headers). Default: off.
	StaleIfError caddy.Duration `json:"stale_if_error,omitempty"`
}

// defaultCacheSize is a local cache's memory bound when max_size is unset.
const defaultCacheSize = 64 << 20

// cacheStatusName names the gateway's cache in Cache-Status (RFC 9211).
const cacheStatusName = "momento-gateway"

func (lc *LocalCacheConfig) validate() error {
	switch {
	case lc == nil:
		return nil
	case lc.MaxAge <= 0:
		return fieldErrorf("local_cache.max_age", "local_cache needs max_age, how old a value answered from the cache may be, e.g. max_age 1s")
	case lc.MaxSize < 0:
		return fieldErrorf("local_cache.max_size", "local_cache max_size %d must be positive", lc.MaxSize)
	case lc.StaleIfError < 0:
		return fieldErrorf("local_cache.stale_if_error", "local_cache stale_if_error %s must be positive", time.Duration(lc.StaleIfError))
	}
	return nil
}

// writeShards is how many shards of items the write counts are kept in.
const writeShards = 1024

// writeSeed seeds the hash that puts items in shards.
var writeSeed = maphash.MakeSeed()

// writeShard is the shard of the region's write counts that counts key.
func (rr *regionReads) writeShard(key readKey) *atomic.Uint64 {
	var h maphash.Hash
	h.SetSeed(writeSeed)
	_, _ = h.WriteString(key.cache)
	_ = h.WriteByte(0)
	_, _ = h.WriteString(key.key)
	return &rr.writes[h.Sum64()%writeShards]
}

// readKey is an item of a region: the cache and the key's bytes as the
// region stores them (key_prefix included), so users never share answers
// they should not, and key and key_base64 name the same item.
type readKey struct{ cache, key string }

// regionReads is a region's read state, kept across reloads with its
// other state: the calls in flight, and the local caches of its handlers.
type regionReads struct {
	// writes counts the writes made through this gateway, per shard of
	// items: a call that saw one happen to its shard while in flight does
	// not fill the caches. (Per shard, so that writes to other items,
	// however many, do not keep a hot item from being cached.)
	writes [writeShards]atomic.Uint64

	mu      sync.Mutex
	flights map[readKey]*flight
	caches  map[cacheSettings]*localCache

	// held counts the bytes of answers that calls in flight hold for
	// their clients (see maxHeldBytes).
	held atomic.Int64
	// heldBy counts, per client address, the calls that address started
	// which are not over yet, and the bytes they hold (see
	// maxHeldPerClient).
	heldMu sync.Mutex
	heldBy map[string]*clientHeld

	hits, misses, coalesced, stale, renewals atomic.Int64
	// unshared counts the misses answered by a call not shared: past
	// the bounds on what shared calls hold.
	unshared atomic.Int64
	// cutOff counts the cached values whose readers' answers were broken
	// off: the values left the cache while being sent, and the bound could
	// not keep them (see cached.left).
	cutOff atomic.Int64
}

// maxHeldBytes bounds the memory of a region's shared calls. A shared
// call keeps its whole answer until its slowest client has it, so clients
// that read slowly, or not at all, would otherwise make the gateway hold a
// copy of a large value each. A call reserves its answer's Content-Length
// when the answer's headers arrive; an answer that does not fit is not
// kept but streamed to the client that started the call, at its pace, and
// the call is not shared (see flight.direct). Small answers are not
// counted (see smallAnswer): the bound is on the large ones.
const maxHeldBytes = 64 << 20

// maxHeldPerClient and maxCallsPerClient bound the shared calls of one
// client address: the bytes of the large answers its clients are in (an
// address is charged an answer's size once per call, while it has a
// client in it), and how many calls it started its clients are still in.
// Past its share, a large answer to a call the address started goes
// direct, and a client whose share cannot take the answer of a call it
// joined makes a call of its own; past the count, the address's GETs that
// would start a call are proxied one call each. So a few slow connections,
// starting calls or joining other clients', cannot take the region's bound
// from other addresses; and however many addresses hold it full of large
// answers, small answers stay shared and cached for everyone. A client
// that has its answer gives its share back at once.
const (
	maxHeldPerClient = 16 << 20
	// A burst of calls started at once holds nothing yet: the count bounds
	// it. Generous, for the many clients one address can stand for (a NAT,
	// or a CDN when trusted_proxies is not set).
	maxCallsPerClient = 64
)

// clientHeld is what one client address's shared calls hold.
type clientHeld struct {
	bytes int64
	calls int
}

// reserve holds n more bytes for a call, if they fit the region's bound
// and, unless client is empty, that client address's share (to which they
// are then charged).
func (rr *regionReads) reserve(client string, n int64) bool {
	rr.heldMu.Lock()
	defer rr.heldMu.Unlock()
	// (Nothing to hold, as for a small answer, always fits the region's
	// bound: the bound may be past its limit while values that left the
	// cache are being read, see cached.left.)
	if n > 0 && rr.held.Load()+n > maxHeldBytes || client != "" && !rr.fits(client, n) {
		return false
	}
	rr.held.Add(n)
	if client != "" {
		rr.heldBy[client].bytes += n
	}
	return true
}

// charge charges n bytes of a call's answer to the share of a client
// address that joined the call, if they fit. Callers uncharge them with
// holdFor(client, -n, 0) when the client leaves.
func (rr *regionReads) charge(client string, n int64) bool {
	rr.heldMu.Lock()
	defer rr.heldMu.Unlock()
	if !rr.fits(client, n) {
		return false
	}
	rr.heldBy[client].bytes += n
	return true
}

// fits reports whether n more bytes fit the client address's share, and
// makes sure the address has an entry. Callers hold rr.heldMu.
func (rr *regionReads) fits(client string, n int64) bool {
	ch := rr.clientEntry(client)
	if ch.bytes+n > maxHeldPerClient {
		if ch.bytes <= 0 && ch.calls <= 0 {
			delete(rr.heldBy, client)
		}
		return false
	}
	return true
}

// clientEntry is what the client address holds, a new entry if it held
// nothing. Callers hold rr.heldMu.
func (rr *regionReads) clientEntry(client string) *clientHeld {
	ch := rr.heldBy[client]
	if ch == nil {
		if rr.heldBy == nil {
			rr.heldBy = map[string]*clientHeld{}
		}
		ch = &clientHeld{}
		rr.heldBy[client] = ch
	}
	return ch
}

// holdFor adds to what the calls of the client address hold, and forgets
// an address that holds nothing.
func (rr *regionReads) holdFor(client string, bytes int64, calls int) {
	rr.heldMu.Lock()
	defer rr.heldMu.Unlock()
	ch := rr.clientEntry(client)
	ch.bytes += bytes
	ch.calls += calls
	if ch.bytes <= 0 && ch.calls <= 0 {
		delete(rr.heldBy, client)
	}
}

// mayStart reports whether the client address may start another shared
// call. Whether the call's answer is kept for its clients is decided when
// its size is known: a small one always is, a large one only if it fits
// the region's bound and the address's share (else it goes direct).
func (rr *regionReads) mayStart(client string) bool {
	rr.heldMu.Lock()
	defer rr.heldMu.Unlock()
	ch := rr.heldBy[client]
	return ch == nil || ch.calls < maxCallsPerClient
}

// cacheSettings identify a local cache: handlers with the same settings
// share one.
type cacheSettings struct {
	maxAge, keep time.Duration
	maxSize      int64
}

// renewAfter is the age past which a hit also starts a call that renews
// the entry (see regionReads.renew): three quarters of max_age.
func (s cacheSettings) renewAfter() time.Duration { return s.maxAge - s.maxAge/4 }

// localCache is one bounded cache of a region's items.
type localCache struct {
	set       cacheSettings
	store     *otter.Cache[readKey, *cached]
	evictions atomic.Int64
	users     int // handlers holding it, under regionReads.mu
}

// cached is a region's answer to a GET (200 with the value, or 404 Key
// Not Found), or a mark left by a write through the gateway: the item's
// TTL, which no cached answer may outlive.
type cached struct {
	status      int
	body        []byte
	contentType []string
	fetched     time.Time
	expires     time.Time // zero: unknown (set elsewhere)
	mark        bool
	// renewing is set by the hit that starts the entry's renewal: one call
	// per entry, so a region that fails or throttles it is not asked again
	// and again before the entry expires.
	renewing atomic.Bool

	// A large value's readers, and whether the entry has left the cache:
	// see startRead. held is what the value counts against the region's
	// bound meanwhile; cut is set when the bound could not take it.
	pin     sync.Mutex
	readers int
	gone    bool
	held    int64
	cut     atomic.Bool
}

// cacheFor returns the region's local cache with these settings, for a
// handler that lets go of it with release.
func (rr *regionReads) cacheFor(lc *LocalCacheConfig) *localCache {
	if lc == nil {
		return nil
	}
	set := cacheSettings{maxAge: time.Duration(lc.MaxAge), maxSize: cmp.Or(lc.MaxSize, defaultCacheSize)}
	set.keep = max(set.maxAge, time.Duration(lc.StaleIfError))
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if c := rr.caches[set]; c != nil {
		c.users++
		return c
	}
	c := &localCache{set: set, users: 1}
	c.store = otter.Must(&otter.Options[readKey, *cached]{
		MaximumWeight: uint64(set.maxSize),
		Weigher: func(k readKey, v *cached) uint32 {
			return uint32(min(len(k.cache)+len(k.key)+len(v.body)+cachedOverhead, 1<<31))
		},
		// Each entry is kept for as long as it may be answered, fresh or
		// stale. One whose TTL is known (a write through the gateway left
		// it) is kept until that TTL instead, answered or not, so that the
		// next fill still knows it: no answer cached later may outlive it.
		// (Unless evicted for room: then a later fill of the item is kept
		// for max_age, as for a write made elsewhere.)
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[readKey, *cached]) time.Duration {
			keep := set.keep
			if v := e.Value; !v.expires.IsZero() {
				keep = time.Until(v.expires)
			}
			return max(keep, time.Millisecond)
		}),
		OnDeletion: func(e otter.DeletionEvent[readKey, *cached]) {
			if e.WasEvicted() && e.Cause == otter.CauseOverflow {
				c.evictions.Add(1)
			}
			e.Value.left(rr)
		},
	})
	if rr.caches == nil {
		rr.caches = map[cacheSettings]*localCache{}
	}
	rr.caches[set] = c
	return c
}

// release lets go of a cache cacheFor returned. A cache that no handler
// holds any more (a reload changed its settings, or removed it) is
// emptied and dropped: otherwise its entries would stay in memory, since
// nothing reads them. A reload that keeps the settings keeps the cache: the
// new config takes it before the old one lets go.
func (rr *regionReads) release(c *localCache) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if c.users--; c.users > 0 {
		return
	}
	delete(rr.caches, c.set)
	c.store.InvalidateAll()
}

// cachedOverhead is what an entry costs beyond its key and value, counted
// against max_size (otter's node and the cached struct).
const cachedOverhead = 200

// read serves a GET through the read path: from the local cache when it
// holds a fresh answer, else through a call shared with every concurrent
// GET of the item, and stale from the cache when the region fails.
func (h *Handler) read(w http.ResponseWriter, r *http.Request, c *call) (status int, cutOff bool) {
	rg := c.region
	rr := &rg.state.reads
	key := readKey{c.cache, c.key}
	lc := h.localCaches[rg.state] // nil without local_cache
	// entry is the item's cached answer while this read may still answer
	// with it (fresh, or stale when the region fails); letGo lets go of it
	// as soon as it cannot, so that a long miss does not keep its value in
	// memory.
	var entry *cached
	letGo := func() {
		if entry != nil {
			entry.endRead(rr)
			entry = nil
		}
	}
	defer letGo()
	if lc != nil {
		if e, ok := lc.store.GetIfPresent(key); ok && !e.mark && e.startRead() {
			entry = e
			if age := time.Since(e.fetched); age <= lc.set.maxAge && (e.expires.IsZero() || time.Now().Before(e.expires)) {
				rr.hits.Add(1)
				if age > lc.set.renewAfter() && h.coalesce() && !e.renewing.Load() &&
					h.app.admitOp(r, c) == nil && e.renewing.CompareAndSwap(false, true) && !rr.renew(h, r, c, lc, key) {
					e.renewing.Store(false) // a later hit tries again
				}
				return writeCached(w, e, "hit; ttl="+strconv.FormatInt(int64((lc.set.maxAge-age)/time.Second), 10))
			}
		}
	}
	if entry != nil && !entry.keptStale(lc) {
		letGo()
	}
	f, joined, rf := rr.join(h, r, c)
	if rf != nil {
		if entry != nil && entry.keptStale(lc) {
			// Refused a call for a limit (the region's budget, or the
			// client's): the last answer, marked stale, as when the region
			// fails.
			rr.stale.Add(1)
			return writeCached(w, entry, "fwd=stale; detail=rate-limited")
		}
		return rf.write(w), false
	}
	if f == nil {
		// Past the bounds on what shared calls hold: a call of its own,
		// streamed at its pace.
		letGo()
		return h.ownCall(w, r, c)
	}
	left, entered := false, ""
	defer func() {
		if !left {
			f.leave(!joined, entered)
		}
	}()
	if joined {
		rr.coalesced.Add(1)
	} else {
		rr.misses.Add(1)
	}
	st, hdr, direct, ok := f.wait(r.Context())
	if !ok {
		w.WriteHeader(499) // the client went away
		return 499, false
	}
	if joined {
		// The answer counts against the share of each address with a
		// client in the call, as it does against the starter's. When the
		// answer is direct (too large to keep: only the call's starter gets
		// it), or this client's address cannot take it, the client makes a
		// call of its own, streamed at its pace.
		client := clientAddress(r)
		if direct || !f.enter(client) {
			left = true
			f.leave(false, "")
			rr.coalesced.Add(-1)
			letGo()
			return h.ownCall(w, r, c)
		}
		entered = client
	}
	if (st >= 500 || st == http.StatusTooManyRequests) && entry != nil && entry.keptStale(lc) {
		// The region fails, or refuses for its account's limit: the last
		// answer, marked stale.
		rr.stale.Add(1)
		return writeCached(w, entry, "fwd=stale; fwd-status="+strconv.Itoa(st)+"; detail=stale-if-error")
	}
	letGo()
	fwd := "fwd=miss"
	if joined {
		fwd += "; collapsed"
	}
	for k, v := range hdr {
		w.Header()[k] = v
	}
	w.Header().Set("Cache-Status", cacheStatusName+"; "+fwd)
	w.WriteHeader(st)
	if direct {
		rr.unshared.Add(1)
		return st, f.pipeTo(w, clientStall)
	}
	return st, f.copyTo(r.Context(), w, clientStall, func(body []byte) {
		if lc != nil && (st == http.StatusOK || st == http.StatusNotFound && string(body) == "Key Not Found") {
			rr.fill(lc, f, key, st, body, hdr["Content-Type"])
		}
	})
}

// keptStale reports whether the entry may still be answered, stale, when
// the region fails (stale_if_error), and within the TTL a write through
// the gateway left.
func (e *cached) keptStale(lc *localCache) bool {
	return time.Since(e.fetched) <= lc.set.keep && (e.expires.IsZero() || time.Now().Before(e.expires))
}

// ownCall serves a GET with a call of its own, not shared: past the bounds
// on what shared calls hold.
func (h *Handler) ownCall(w http.ResponseWriter, r *http.Request, c *call) (status int, cutOff bool) {
	if rf := h.app.admitOp(r, c); rf != nil {
		return rf.write(w), false
	}
	c.region.state.reads.misses.Add(1)
	c.region.state.reads.unshared.Add(1)
	w.Header().Set("Cache-Status", cacheStatusName+"; fwd=miss")
	return h.proxy(w, r, c)
}

// fill caches a call's answer, unless a write through this gateway
// happened since the call began: a client always reads its own writes.
// It holds rr.mu, as wrote does, so that no write falls between the check
// and the fill.
func (rr *regionReads) fill(lc *localCache, f *flight, key readKey, status int, body []byte, contentType []string) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	if f.started == rr.writeShard(key).Load() {
		lc.fill(key, status, body, contentType, f.began)
	}
}

// fill caches an answer, bounded by a TTL a write through the gateway left.
func (lc *localCache) fill(key readKey, status int, body []byte, contentType []string, fetched time.Time) {
	e := &cached{status: status, body: body, contentType: contentType, fetched: fetched}
	if prev, ok := lc.store.GetIfPresent(key); ok {
		e.expires = prev.expires
	}
	if !e.expires.IsZero() && !time.Now().Before(e.expires) {
		return
	}
	lc.store.Set(key, e)
}

// writeCached answers from a cached entry, which the caller holds as a
// reader (startRead). A large value goes in parts, each of which the client
// must take within clientStall; cutOff reports that its answer was broken
// off because the entry left the cache and the region's bound could not
// keep its value for the client (see cached.left).
func writeCached(w http.ResponseWriter, e *cached, cacheStatus string) (status int, cutOff bool) {
	hdr := w.Header()
	hdr["Content-Type"] = e.contentType
	if e.status != http.StatusOK {
		hdr["Content-Type"] = plainText
	}
	hdr["X-Content-Type-Options"] = noSniff
	hdr["Content-Length"] = []string{strconv.Itoa(len(e.body))}
	hdr.Set("Age", strconv.FormatInt(int64(time.Since(e.fetched)/time.Second), 10))
	hdr.Set("Cache-Status", cacheStatusName+"; "+cacheStatus)
	w.WriteHeader(e.status)
	if len(e.body) <= smallAnswer {
		_, _ = w.Write(e.body)
		return e.status, false
	}
	g := stallGuard{rc: http.NewResponseController(w), stall: clientStall}
	defer g.disarm()
	for sent := 0; sent < len(e.body); {
		if e.cut.Load() {
			return e.status, true
		}
		part := e.body[sent:min(len(e.body), sent+stallPart)]
		g.arm()
		if _, err := w.Write(part); err != nil {
			return e.status, false // the client went away, or stalled
		}
		sent += len(part)
	}
	return e.status, false
}

// A large value being sent to clients stays in memory until they have it,
// even after its entry has left the cache (evicted for room, expired,
// replaced, purged): clients that read slowly would otherwise keep any
// number of values the cache's max_size no longer counts. So a large
// entry counts its readers, and when it leaves the cache while it has
// some, its value is counted against the region's bound on what shared
// calls hold (maxHeldBytes) until the last of them is done. If the bound
// cannot take it, it is counted past it, and the readers' answers are
// broken off at their next part (a stalled one within clientStall): they
// read again, and get the item anew. A read lets go of a cached entry as
// soon as it cannot answer with it (see Handler.read). Small values (see
// smallAnswer) are not counted, as elsewhere.

// startRead registers a client that may be sent the entry's value. False:
// the entry has left the cache already, and the client reads as on a
// miss. Callers call endRead when done with the entry.
func (e *cached) startRead() bool {
	if len(e.body) <= smallAnswer {
		return true
	}
	e.pin.Lock()
	defer e.pin.Unlock()
	if e.gone {
		return false
	}
	e.readers++
	return true
}

// endRead is the other half of startRead: the last reader of an entry that
// left the cache gives its value's bytes back to the region's bound.
func (e *cached) endRead(rr *regionReads) {
	if len(e.body) <= smallAnswer {
		return
	}
	e.pin.Lock()
	defer e.pin.Unlock()
	if e.readers--; e.readers == 0 && e.held > 0 {
		rr.held.Add(-e.held)
		e.held = 0
	}
}

// left is told that the entry has left the cache: its readers' hold on
// its value now counts against the region's bound, or, if the bound
// cannot take it, their answers are broken off.
func (e *cached) left(rr *regionReads) {
	if len(e.body) <= smallAnswer {
		return
	}
	e.pin.Lock()
	defer e.pin.Unlock()
	e.gone = true
	if e.readers == 0 {
		return
	}
	e.held = int64(len(e.body))
	if !rr.reserve("", e.held) {
		// Past the bound, it is counted all the same (it is in memory until
		// its readers are gone), and its readers are cut off. Meanwhile the
		// bound is full: no large answer is kept or cached anew, so what can
		// be held past the bound is at most what the cache held.
		rr.held.Add(e.held)
		e.cut.Store(true)
		rr.cutOff.Add(1)
	}
}

// wrote records a write (set or delete) of an item through this gateway,
// before it is acknowledged: the calls in flight for it are left to the
// clients already in them, and the caches forget it (a set leaves its TTL
// behind, which no answer cached later may outlive).
func (rr *regionReads) wrote(key readKey, c *call) {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	rr.writeShard(key).Add(1)
	delete(rr.flights, key)
	for _, lc := range rr.caches {
		if c.op == opSet {
			// Clamped, so that a huge ttl_seconds cannot wrap around.
			ttl := time.Duration(min(c.ttl, uint64(maxMarkTTL/time.Second))) * time.Second
			lc.store.Set(key, &cached{mark: true, expires: time.Now().Add(ttl)})
		} else {
			lc.store.Invalidate(key)
		}
	}
}

// maxMarkTTL bounds the TTL a write leaves behind in the local caches: far
// past any max_age, and far from time.Duration's limit.
const maxMarkTTL = 100 * 365 * 24 * time.Hour

// purge empties the region's local caches, or only the entries of one
// cache (a Momento cache) when cacheName is not empty. It returns how many
// entries went.
func (rr *regionReads) purge(cacheName string) int {
	rr.mu.Lock()
	caches := make([]*localCache, 0, len(rr.caches))
	for _, lc := range rr.caches {
		caches = append(caches, lc)
	}
	rr.mu.Unlock()
	n := 0
	for _, lc := range caches {
		for k := range lc.store.Keys() {
			if cacheName == "" || k.cache == cacheName {
				if _, ok := lc.store.Invalidate(k); ok {
					n++
				}
			}
		}
	}
	return n
}

// stop ends the caches' background work.
func (rr *regionReads) stop() {
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for _, lc := range rr.caches {
		lc.store.StopAllGoroutines()
	}
}

// cacheStats are a region's read figures, summed over its caches.
type cacheStats struct {
	hits, misses, coalesced, stale, renewals, evictions, bytes int64
	unshared, held, cutOff                                     int64
}

func (rr *regionReads) stats() cacheStats {
	s := cacheStats{hits: rr.hits.Load(), misses: rr.misses.Load(), coalesced: rr.coalesced.Load(), stale: rr.stale.Load(), renewals: rr.renewals.Load(),
		unshared: rr.unshared.Load(), held: rr.held.Load(), cutOff: rr.cutOff.Load()}
	rr.mu.Lock()
	defer rr.mu.Unlock()
	for _, lc := range rr.caches {
		s.evictions += lc.evictions.Load()
		s.bytes += int64(lc.store.WeightedSize())
	}
	return s
}

// flight is one upstream GET that every concurrent GET of the item shares.
// It is an http.ResponseWriter: the proxy writes the region's answer into
// it, as it arrives, and each client streams from it at its own pace.
type flight struct {
	reads *regionReads // counts the bytes held
	owner string       // the client address that started it
	// started is the region's write count when the call began; began its
	// time.
	started uint64
	began   time.Time
	header  http.Header // written by the proxy until it writes the status

	// cancel ends the call when its last client has left.
	cancel context.CancelFunc

	mu      sync.Mutex
	clients int
	status  int
	body    []byte
	done    bool
	cut     bool // the region broke off mid-answer, or the call was abandoned
	// abandoned is set when the last client left before the answer was
	// whole, or the call is direct: no client may join it.
	abandoned bool
	// reserved is what the call holds against the region's bound: the
	// answer's Content-Length once its headers arrive (more, if more
	// arrives), unless the answer is small (free: see smallAnswer).
	// charged is what each address with a client in the call (members,
	// counting its clients) has of it counted against its share: the
	// address that started the call from when the headers arrive, others
	// from when their first client enters, until their last client leaves.
	reserved       int64
	free           int64
	charged        int64
	members        map[string]int
	starterEntered bool
	released       bool // the bytes held are given back
	// overflow is set when more arrived than the bounds let the call keep.
	overflow bool
	// direct is set when the answer does not fit the bounds when its
	// headers arrive: it is not kept but streamed through pr and pw to the
	// client that started the call, at that client's pace (piped counts
	// it). starterLeft records that this client has gone.
	direct      bool
	pr          *io.PipeReader
	pw          *io.PipeWriter
	piped       int64
	starterLeft bool
	changed     chan struct{}
}

// join adds a client to the item's call in flight, or starts one. It
// reports whether the client joined a call already made. Only a client
// that starts a call spends its max_ops_per_client. No flight and no
// refusal: the client's address has as many calls as it may start
// (maxCallsPerClient), and the client is to make a call of its own.
func (rr *regionReads) join(h *Handler, r *http.Request, c *call) (*flight, bool, *refusal) {
	key := readKey{c.cache, c.key}
	rr.mu.Lock()
	if f := rr.flights[key]; f != nil && h.coalesce() {
		f.mu.Lock()
		if !f.abandoned {
			f.clients++
			f.mu.Unlock()
			rr.mu.Unlock()
			return f, true, nil
		}
		f.mu.Unlock()
	}
	if !rr.mayStart(clientAddress(r)) {
		rr.mu.Unlock()
		return nil, false, nil
	}
	if rf := h.app.admitOp(r, c); rf != nil {
		rr.mu.Unlock()
		return nil, false, rf
	}
	f := rr.start(h, r, c, key)
	rr.mu.Unlock()
	return f, false, nil
}

// start starts a call for the item, with one client. Callers hold rr.mu.
func (rr *regionReads) start(h *Handler, r *http.Request, c *call, key readKey) *flight {
	f := &flight{reads: rr, owner: clientAddress(r), started: rr.writeShard(key).Load(), began: time.Now(), header: http.Header{}, changed: make(chan struct{}), clients: 1}
	rr.holdFor(f.owner, 0, 1)
	if h.coalesce() {
		if rr.flights == nil {
			rr.flights = map[readKey]*flight{}
		}
		rr.flights[key] = f
	}
	// The call belongs to no one client: it goes on when its first client
	// leaves, for the others, and ends when the last one has.
	fc := *c
	ctx, cancel := context.WithCancel(context.WithoutCancel(r.Context()))
	f.cancel = cancel
	fr := r.WithContext(ctx)
	go func() {
		_, cut := h.proxy(f, fr, &fc)
		// An abandoned call ends wherever it was: its answer is not whole,
		// whatever the proxy could tell.
		cut = cut || ctx.Err() != nil
		rr.mu.Lock()
		if rr.flights[key] == f {
			delete(rr.flights, key)
		}
		rr.mu.Unlock()
		f.finish(cut)
		cancel()
	}()
	return f
}

// renew fetches an item whose cached answer is nearing max_age, unless a
// call for it is in flight already, and caches the new answer: the item's
// readers keep getting hits rather than all waiting for the region the
// moment the entry expires. The call is charged to the client whose read
// started it (max_ops_per_client), as the miss it replaces would be; a
// region that fails it leaves the entry as it was.
func (rr *regionReads) renew(h *Handler, r *http.Request, c *call, lc *localCache, key readKey) bool {
	if !rr.mayStart(clientAddress(r)) {
		return false
	}
	rr.mu.Lock()
	if rr.flights[key] != nil {
		rr.mu.Unlock()
		return false
	}
	f := rr.start(h, r, c, key)
	rr.mu.Unlock()
	rr.renewals.Add(1)
	go func() {
		defer f.leave(true, "")
		st, ct, body, ok := f.result()
		if ok && (st == http.StatusOK || st == http.StatusNotFound && string(body) == "Key Not Found") {
			rr.fill(lc, f, key, st, body, ct)
		}
	}()
	return true
}

// leave takes a client off the call; the last one ends it, if it still runs
// (it says nothing about the region then). starter says the client is the
// one that started the call, the only reader of a direct answer; entered
// is the address the client entered with (see enter), if it did.
func (f *flight) leave(starter bool, entered string) {
	f.mu.Lock()
	if starter {
		f.starterLeft = true
		if f.pr != nil {
			_ = f.pr.Close()
		}
		if f.starterEntered {
			f.exit(f.owner)
		}
		// The call is over for the address that started it, whoever else
		// still reads it.
		f.reads.holdFor(f.owner, 0, -1)
	}
	if entered != "" {
		f.exit(entered)
	}
	f.clients--
	last := f.clients == 0 && !f.done
	f.abandoned = f.abandoned || last
	f.releaseIfOver()
	f.mu.Unlock()
	if last {
		f.cancel()
	}
}

// releaseIfOver gives the answer's bytes back to the region's bound once
// the call is done and its last client has left. Callers hold f.mu.
func (f *flight) releaseIfOver() {
	if f.done && f.clients == 0 && !f.released {
		f.released = true
		f.reads.held.Add(-f.reserved)
	}
}

// enter counts a client of a call whose answer's size is known against
// its address's share: the address's first client in the call charges it.
// False: the share cannot take it.
func (f *flight) enter(addr string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.members[addr] == 0 && !f.reads.charge(addr, f.charged) {
		return false
	}
	if f.members == nil {
		f.members = map[string]int{}
	}
	f.members[addr]++
	return true
}

// exit is the other half of enter; the address's last client gives the
// charge back. Callers hold f.mu.
func (f *flight) exit(addr string) {
	if f.members[addr]--; f.members[addr] <= 0 {
		delete(f.members, addr)
		f.reads.holdFor(addr, -f.charged, 0)
	}
}

// Header implements http.ResponseWriter.
func (f *flight) Header() http.Header { return f.header }

// WriteHeader implements http.ResponseWriter: the answer's headers have
// arrived, and with them its size, which the call reserves.
func (f *flight) WriteHeader(status int) {
	f.mu.Lock()
	f.writeHeader(status)
	f.mu.Unlock()
}

// writeHeader sets the status once, and reserves the answer's size or
// makes the call direct. Callers hold f.mu.
func (f *flight) writeHeader(status int) {
	if f.status != 0 {
		return
	}
	n, err := strconv.ParseInt(f.header.Get("Content-Length"), 10, 64)
	known := err == nil && n >= 0
	if !known {
		n = unknownLengthReserve
	}
	owner := f.owner
	if f.starterLeft {
		owner = "" // nobody to charge: its client is gone
	}
	if known && n <= smallAnswer {
		f.free, n = n, 0
	}
	if f.reads.reserve(owner, n) {
		f.reserved, f.charged = n, n
		if owner != "" {
			f.members = map[string]int{owner: 1}
			f.starterEntered = true
		}
		if known {
			f.body = make([]byte, 0, n+f.free) // the whole answer, in one piece
		}
	} else {
		f.direct, f.abandoned = true, true
		f.pr, f.pw = io.Pipe()
		if f.starterLeft {
			_ = f.pr.Close()
		}
	}
	f.status = status
	f.notify()
}

// smallAnswer is the size up to which an answer is not counted against
// the bounds on what shared calls hold: kept for a client that does not
// read, it costs no more than the copy buffer (bufPool) the same GET
// would hold proxied one call each. So clients holding the bounds full of
// large answers cannot turn sharing and the local cache off for small
// ones, the hot keys of most sites.
const smallAnswer = 32 << 10

// unknownLengthReserve is what an answer without a Content-Length reserves
// when its headers arrive: Momento's largest item. An answer that outgrows
// it reserves more as it arrives, against the region's bound only.
const unknownLengthReserve = 5 << 20

// errOverHeldBounds ends a call whose answer outgrew what it reserved and
// then the region's bound.
var errOverHeldBounds = errors.New("the answer outgrew the bounds on what shared calls hold")

// Write implements http.ResponseWriter.
func (f *flight) Write(p []byte) (int, error) {
	f.mu.Lock()
	f.writeHeader(http.StatusOK)
	if f.direct {
		pw := f.pw
		f.mu.Unlock()
		n, err := pw.Write(p)
		f.mu.Lock()
		f.piped += int64(n)
		f.mu.Unlock()
		return n, err
	}
	defer f.mu.Unlock()
	if more := int64(len(f.body)+len(p)) - f.reserved - f.free; more > 0 {
		if !f.reads.reserve("", more) {
			f.overflow = true
			return 0, errOverHeldBounds
		}
		f.reserved += more
	}
	f.body = append(f.body, p...)
	f.notify()
	return len(p), nil
}

func (f *flight) finish(cut bool) {
	f.mu.Lock()
	if f.status == 0 {
		f.status = http.StatusBadGateway
	}
	got := int64(len(f.body))
	if f.direct {
		got = f.piped
	}
	if n, err := strconv.ParseInt(f.header.Get("Content-Length"), 10, 64); err == nil && n != got {
		cut = true // whatever ended it, the answer is not whole
	}
	cut = cut || f.overflow
	f.done, f.cut = true, cut
	if f.pw != nil {
		if cut {
			_ = f.pw.CloseWithError(errAnswerCut)
		} else {
			_ = f.pw.Close()
		}
	}
	f.releaseIfOver()
	f.notify()
	f.mu.Unlock()
}

// errAnswerCut is what the reader of a direct answer gets when the region
// broke off.
var errAnswerCut = errors.New("the region's answer was cut off")

// notify wakes the clients. Callers hold f.mu.
func (f *flight) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// result waits for the whole answer: its status, Content-Type and body,
// and whether it arrived whole. (The call always ends: the proxy's timeout
// bounds it.)
func (f *flight) result() (status int, contentType []string, body []byte, ok bool) {
	for {
		f.mu.Lock()
		done, ch := f.done, f.changed
		if done {
			status, body, ok = f.status, f.body, !f.cut && !f.direct
		}
		if f.pr != nil {
			_ = f.pr.Close() // a direct answer is not kept: nothing to wait for
		}
		f.mu.Unlock()
		if done {
			return status, f.header["Content-Type"], body, ok
		}
		<-ch
	}
}

// wait waits for the answer's status and headers, and tells whether the
// answer is direct (streamed to the call's starter only).
func (f *flight) wait(ctx context.Context) (status int, header http.Header, direct, ok bool) {
	for {
		f.mu.Lock()
		st, direct, ch := f.status, f.direct, f.changed
		f.mu.Unlock()
		if st != 0 {
			return st, f.header, direct, true
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return 0, nil, false, false
		}
	}
}

// pipeTo streams a direct answer to the client that started the call, and
// reports whether the region broke off. Like copyTo, a client that takes
// no part of the answer for stall is dropped.
func (f *flight) pipeTo(w http.ResponseWriter, stall time.Duration) (cutOff bool) {
	g := stallGuard{rc: http.NewResponseController(w), stall: stall}
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	for {
		n, err := f.pr.Read(*bp)
		if n > 0 {
			g.arm()
			_, werr := w.Write((*bp)[:n])
			if werr == nil {
				werr = g.rc.Flush()
			}
			g.disarm()
			if werr != nil {
				_ = f.pr.CloseWithError(werr) // the client went away, or stalled
				return false
			}
		}
		switch {
		case err == io.EOF:
			return false
		case err != nil:
			return errors.Is(err, errAnswerCut)
		}
	}
}

// copyTo streams the body to a client as it arrives, and reports whether
// the region broke off (the client's answer must then be aborted). The
// answer's last byte waits until the answer is whole, and whole is called
// with it first: a client that has its whole answer finds it cached when
// it reads again. A client that takes no part of the answer for stall is
// dropped: the call holds the answer for it until it has it all.
func (f *flight) copyTo(ctx context.Context, w http.ResponseWriter, stall time.Duration, whole func(body []byte)) (cutOff bool) {
	g := stallGuard{rc: http.NewResponseController(w), stall: stall}
	defer g.disarm()
	sent, told := 0, false
	for {
		f.mu.Lock()
		body, done, cut, ch := f.body, f.done, f.cut, f.changed
		f.mu.Unlock()
		end := len(body)
		if !done {
			end-- // the last byte waits for the answer to be whole
		}
		if done && !cut && !told {
			told = true
			whole(body)
		}
		if sent < end {
			// In parts, so that the deadline is on progress, not on the
			// whole value.
			part := body[sent:min(end, sent+stallPart)]
			g.arm()
			if _, err := w.Write(part); err != nil {
				return false // the client went away, or stalled
			}
			sent += len(part)
			if !done && sent == end {
				_ = g.rc.Flush()
			}
			continue
		}
		if done {
			return cut
		}
		g.disarm() // waiting for the region, not the client
		select {
		case <-ch:
		case <-ctx.Done():
			return false
		}
	}
}
