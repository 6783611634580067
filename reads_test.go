package momento

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// switchable is a region in front of the embedded backend whose GETs can
// be held, or made to fail, by the test.
type switchable struct {
	next http.Handler
	gets atomic.Int64
	mu   sync.Mutex
	hold chan struct{} // GETs wait until it is closed
	fail string        // "", "500", "hang", "reset"
}

func (s *switchable) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Path, "/cache/") {
		s.gets.Add(1)
		s.mu.Lock()
		hold, fail := s.hold, s.fail
		s.mu.Unlock()
		if hold != nil {
			<-hold
		}
		switch fail {
		case "500":
			w.WriteHeader(http.StatusInternalServerError)
			return
		case "429":
			w.WriteHeader(http.StatusTooManyRequests)
			return
		case "hang":
			<-r.Context().Done()
			return
		case "reset":
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
			return
		}
	}
	s.next.ServeHTTP(w, r)
}

func (s *switchable) set(fail string, hold chan struct{}) {
	s.mu.Lock()
	s.fail, s.hold = fail, hold
	s.mu.Unlock()
}

func readsGateway(t *testing.T, directives string) (*gateway, *switchable, *momentolocal.Handler, *upstream) {
	t.Helper()
	return readsGatewayTimeout(t, "300ms", directives)
}

// switchedRegion is the embedded backend (token "t") behind a switch that
// can make it fail.
func switchedRegion(t *testing.T) (*switchable, *momentolocal.Handler, *upstream) {
	t.Helper()
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	sw := &switchable{next: lh.HTTPHandler()}
	return sw, lh, newUpstream(t, sw)
}

// readsGatewayTimeout is readsGateway with the handler's timeout given.
func readsGatewayTimeout(t *testing.T, timeout, directives string) (*gateway, *switchable, *momentolocal.Handler, *upstream) {
	t.Helper()
	sw, lh, up := switchedRegion(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout "+timeout+"\n\t\tbreaker {\n\t\t\tfailures 100\n\t\t}\n"+directives+"\t}")
	return g, sw, lh, up
}

// Concurrent GETs of one item share one upstream call, and every client
// gets the whole value.
func TestConcurrentReadsShareOneCall(t *testing.T) {
	g, sw, _, up := readsGatewayTimeout(t, "10s", "") // a 1 MiB upload: no short timeout to race under -race
	value := make([]byte, 1<<20)
	_, _ = rand.Read(value)
	expect(t, g.do(http.MethodPut, "/cache/c?key=hot&ttl_seconds=600", bytes.NewReader(value)), 204, "")
	rs := pooledRegionState(t, "r", up.URL)
	hold := make(chan struct{})
	sw.set("", hold)
	const n = 20
	var wg sync.WaitGroup
	bodies := make([]response, n)
	for i := range n {
		wg.Add(1)
		go func() { defer wg.Done(); bodies[i] = g.get("/cache/c?key=hot") }()
	}
	waitFor(t, func() bool { return rs.reads.coalesced.Load() == n-1 })
	close(hold)
	wg.Wait()
	collapsed := 0
	for i, r := range bodies {
		if r.status != 200 || !bytes.Equal([]byte(r.body), value) {
			t.Fatalf("client %d got %d and %d bytes", i, r.status, len(r.body))
		}
		if strings.Contains(r.header.Get("Cache-Status"), "collapsed") {
			collapsed++
		}
	}
	if got := sw.gets.Load(); got != 1 {
		t.Fatalf("%d concurrent GETs made %d upstream calls, want 1", n, got)
	}
	if collapsed != n-1 {
		t.Fatalf("%d answers say collapsed, want %d", collapsed, n-1)
	}
}

// A GET never joins a call that began before a write of the item finished,
// nor is answered from a cache the write made stale: a client reads its
// own writes, with coalescing and with the local cache.
func TestReadYourWrites(t *testing.T) {
	for _, tc := range []struct{ name, cfg string }{{"coalescing", ""}, {"local cache", "\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n"}} {
		cfg := tc.cfg
		t.Run(tc.name, func(t *testing.T) {
			g, sw, _, _ := readsGateway(t, cfg)
			expect(t, g.put("/cache/c?key=k&ttl_seconds=600", "old"), 204, "")
			expect(t, g.get("/cache/c?key=k"), 200, "old")
			// A read in flight with the old value…
			hold := make(chan struct{})
			sw.set("", hold)
			oldRead := make(chan response, 1)
			go func() { oldRead <- g.get("/cache/c?key=k") }()
			waitFor(t, func() bool { return sw.gets.Load() >= 2 || strings.Contains(cfg, "local") })
			sw.set("", nil)
			// …then a write, acknowledged: reads after it see it.
			expect(t, g.put("/cache/c?key=k&ttl_seconds=600", "new"), 204, "")
			expect(t, g.get("/cache/c?key=k"), 200, "new")
			close(hold)
			<-oldRead
			expect(t, g.get("/cache/c?key=k"), 200, "new")
			expect(t, g.do(http.MethodDelete, "/cache/c?key=k", nil), 204, "")
			expect(t, g.get("/cache/c?key=k"), 404, "Key Not Found")
		})
	}
}

// The local cache answers within max_age without the region; a write made
// behind the gateway's back shows once max_age has passed; a value written
// through the gateway is never answered past its TTL.
func TestLocalCacheFreshnessAndTTL(t *testing.T) {
	sw, _, up := switchedRegion(t)
	// Under /fresh/, a short max_age; elsewhere one far longer than the
	// one-second TTL below, so that only the TTL can end that entry.
	g := startGateway(t, "\thandle_path /fresh/* {\n\t\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\t\tlocal_cache {\n\t\t\t\tmax_age 300ms\n\t\t\t}\n\t\t}\n\t}\n"+
		"\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n\t}")

	// A TTL of one second through the gateway: never answered past it,
	// however long max_age. (Written first: the second runs meanwhile.)
	expect(t, g.put("/cache/c?key=brief&ttl_seconds=1", "short-lived"), 204, "")
	written := time.Now()
	expect(t, g.get("/cache/c?key=brief"), 200, "short-lived")
	if r := g.get("/cache/c?key=brief"); !strings.HasPrefix(r.header.Get("Cache-Status"), "momento-gateway; hit") {
		t.Fatalf("the brief value is not cached: %q", r.header.Get("Cache-Status"))
	}
	expect(t, g.put("/fresh/cache/c?key=k&ttl_seconds=600", "v1"), 204, "")
	r := g.get("/fresh/cache/c?key=k")
	expect(t, r, 200, "v1")
	if cs := r.header.Get("Cache-Status"); cs != "momento-gateway; fwd=miss" {
		t.Errorf("first read: Cache-Status %q", cs)
	}
	calls := sw.gets.Load()
	r = g.get("/fresh/cache/c?key=k")
	expect(t, r, 200, "v1")
	if cs := r.header.Get("Cache-Status"); !strings.HasPrefix(cs, "momento-gateway; hit") || r.header.Get("Age") == "" {
		t.Errorf("second read: Cache-Status %q, Age %q", cs, r.header.Get("Age"))
	}
	if sw.gets.Load() != calls {
		t.Fatal("a fresh hit went to the region")
	}
	// Misses are cached the same way.
	expect(t, g.get("/fresh/cache/c?key=none"), 404, "Key Not Found")
	calls = sw.gets.Load()
	expect(t, g.get("/fresh/cache/c?key=none"), 404, "Key Not Found")
	if sw.gets.Load() != calls {
		t.Fatal("a cached miss went to the region")
	}

	// The same under the short max_age, read now and then: by the time
	// the entry has aged out and a read fills it again, that fill must
	// still know the TTL.
	expect(t, g.put("/fresh/cache/c?key=brief2&ttl_seconds=1", "short-lived"), 204, "")
	written2 := time.Now()
	lastOK := make(chan time.Duration, 1)
	go func() {
		var last time.Duration
		for _, at := range []time.Duration{0, 800 * time.Millisecond, 1050 * time.Millisecond, 1090 * time.Millisecond} {
			time.Sleep(time.Until(written2.Add(at)))
			if resp, err := g.client.Get(g.base + "/fresh/cache/c?key=brief2"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					last = time.Since(written2)
				}
			}
		}
		lastOK <- last
	}()

	// Behind the gateway's back, straight at the region.
	req, _ := http.NewRequest(http.MethodPut, up.URL+"/cache/c?key=k&ttl_seconds=600", strings.NewReader("v2"))
	req.Header.Set("Authorization", "t")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("direct write: %v %v", resp, err)
	}
	start := time.Now()
	waitFor(t, func() bool { return g.get("/fresh/cache/c?key=k").body == "v2" })
	if seen := time.Since(start); seen > 300*time.Millisecond+500*time.Millisecond {
		t.Errorf("a write behind the gateway showed after %v, more than max_age", seen)
	}

	waitFor(t, func() bool { return g.get("/cache/c?key=brief").status == 404 })
	if gone := time.Since(written); gone > time.Second+500*time.Millisecond {
		t.Errorf("a value with a one-second TTL was served for %v", gone)
	}
	if last := <-lastOK; last > time.Second+40*time.Millisecond {
		t.Errorf("under max_age 300ms, a value with a one-second TTL was served %v after it was written", last)
	}
}

// The memory bound holds: past max_size the cache evicts.
func TestLocalCacheEvictsWithinMaxSize(t *testing.T) {
	g, _, _, up := readsGateway(t, "\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t\tmax_size 64KiB\n\t\t}\n")
	value := strings.Repeat("x", 4<<10)
	for i := range 100 {
		expect(t, g.put(fmt.Sprintf("/cache/c?key=k%d&ttl_seconds=600", i), value), 204, "")
		expect(t, g.get(fmt.Sprintf("/cache/c?key=k%d", i)), 200, value)
	}
	rs := pooledRegionState(t, "r", up.URL)
	for _, lc := range rs.reads.caches {
		lc.store.CleanUp()
	}
	st := rs.reads.stats()
	if st.bytes > 64<<10 || st.evictions == 0 {
		t.Fatalf("cache holds %d bytes (max_size 64 KiB) after %d evictions", st.bytes, st.evictions)
	}
}

// stale_if_error: when the region fails, a recent enough value is answered
// with 200, Age and Cache-Status saying it is stale; past the bound, the
// failure passes.
func TestStaleIfError(t *testing.T) {
	// One gateway, a region for each way of failing (routed by cache
	// name), so that the failures run side by side.
	fails := []string{"500", "429", "hang", "reset", "refused", "breaker"}
	regions, routes := "", ""
	type failing struct {
		sw *switchable
		up *upstream
	}
	region := map[string]failing{}
	for _, fail := range fails {
		sw, _, up := switchedRegion(t)
		region[fail] = failing{sw, up}
		regions += regionBlock("r-"+fail, up.URL, "t")
		routes += "\t\troute c-" + fail + " r-" + fail + "\n"
	}
	// The stale window outlasts the hanging call's timeout.
	g := startGateway(t, "\tmomento {\n"+regions+routes+"\t\ttimeout 100ms\n\t\tbreaker {\n\t\t\tfailures 100\n\t\t}\n"+
		"\t\tlocal_cache {\n\t\t\tmax_age 10ms\n\t\t\tstale_if_error 250ms\n\t\t}\n\t}")
	for _, fail := range fails {
		t.Run(fail, func(t *testing.T) {
			t.Parallel()
			path := "/cache/c-" + fail + "?key=k"
			expect(t, g.put(path+"&ttl_seconds=600", "last known"), 204, "")
			expect(t, g.get(path), 200, "last known")
			time.Sleep(20 * time.Millisecond) // past max_age: the next read asks the region
			switch rg := region[fail]; fail {
			case "breaker":
				pooledBreaker(t, "r-"+fail, rg.up.URL).trip()
			case "refused": // the region's listener is gone
				rg.up.srv.Close()
			default:
				rg.sw.set(fail, nil)
			}
			r := g.get(path)
			expect(t, r, 200, "last known")
			if cs := r.header.Get("Cache-Status"); !strings.Contains(cs, "fwd=stale") || r.header.Get("Age") == "" {
				t.Fatalf("stale answer: Cache-Status %q, Age %q", cs, r.header.Get("Age"))
			}
			if fail == "429" {
				// The region's 429s teach the gateway to meter its calls
				// (see budget.go): refused by the budget, reads are
				// answered stale too.
				waitFor(t, func() bool {
					r := g.get(path)
					expect(t, r, 200, "last known")
					return strings.Contains(r.header.Get("Cache-Status"), "fwd=stale; detail=rate-limited")
				})
			}
			// Past stale_if_error, the failure passes.
			waitFor(t, func() bool { return g.get(path).status >= 429 })
		})
	}
}

// Users never get each other's cached values: the cache is keyed by the
// key the region stores, key_prefix included.
func TestLocalCacheKeepsUsersApart(t *testing.T) {
	g, _, _, _ := readsGateway(t, "\t\tkey_prefix {http.request.header.X-User}:\n\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n")
	for _, user := range []string{"alice", "bob"} {
		expect(t, g.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=600", strings.NewReader(user+"'s"), "X-User", user), 204, "")
	}
	for range 2 { // the second time from the cache
		for _, user := range []string{"alice", "bob"} {
			if r := g.do(http.MethodGet, "/cache/c?key=k", nil, "X-User", user); r.body != user+"'s" {
				t.Fatalf("%s read %q", user, r.body)
			}
		}
	}
}

// The local cache is purged through the admin API, and kept across a
// reload, like the breaker.
func TestLocalCachePurgeAndReload(t *testing.T) {
	sw, _, up := switchedRegion(t)
	site := "\tmomento {\n" + regionBlock("cached", up.URL, "t") + "\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n\t}"
	og := startOpsGateway(t, site)
	expect(t, og.put("/cache/c?key=k&ttl_seconds=600", "v"), 204, "")
	expect(t, og.get("/cache/c?key=k"), 200, "v")
	og.reload(t, site)
	calls := sw.gets.Load()
	r := og.get("/cache/c?key=k")
	if !strings.HasPrefix(r.header.Get("Cache-Status"), "momento-gateway; hit") || sw.gets.Load() != calls {
		t.Fatalf("after a reload the cache was cold: %q", r.header.Get("Cache-Status"))
	}
	if rd := og.regions(t)["cached"].Reads; rd.Hits != 1 || rd.Misses != 1 || rd.Saved != 1 || rd.CachedBytes == 0 {
		t.Errorf("admin API reads: %+v", rd)
	}
	resp, err := adminClient.Post(og.admin+"/momento/regions/cached/purge?cache=c", "", nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("purge: %v %v", resp, err)
	}
	resp.Body.Close()
	expect(t, og.get("/cache/c?key=k"), 200, "v")
	if sw.gets.Load() != calls+1 {
		t.Fatal("after a purge the value still came from the cache")
	}

	// A reload that changes local_cache starts a new cache, and the old
	// one lets go of its memory.
	og.reload(t, strings.Replace(site, "max_age 1m", "max_age 2m", 1))
	if rd := og.regions(t)["cached"].Reads; rd.CachedBytes != 0 {
		t.Errorf("after a reload with new settings the region still holds %d cached bytes", rd.CachedBytes)
	}
	if r := og.get("/cache/c?key=k"); r.status != 200 || !strings.Contains(r.header.Get("Cache-Status"), "fwd=miss") {
		t.Errorf("first read under the new settings: %d, Cache-Status %q", r.status, r.header.Get("Cache-Status"))
	}
}

// Clients that ask for a large value and never read it cannot make the
// gateway hold a copy each: past a bound, GETs stream one call each at
// the client's pace, and every other client is still answered in full.
func TestClientsThatDoNotReadCannotFillTheGatewayMemory(t *testing.T) {
	g, sw, _, up := readsGatewayTimeout(t, "10s", "") // a 4 MiB upload: no short timeout to race under -race
	value := make([]byte, 4<<20)
	_, _ = rand.Read(value)
	expect(t, g.do(http.MethodPut, "/cache/c?key=big&ttl_seconds=600", bytes.NewReader(value)), 204, "")
	rs := pooledRegionState(t, "r", up.URL)
	// Calls a client could join: past the bounds, a call's answer goes
	// direct to its one client, at that client's pace.
	inFlight := func() int {
		rs.reads.mu.Lock()
		defer rs.reads.mu.Unlock()
		n := 0
		for _, f := range rs.reads.flights {
			f.mu.Lock()
			if !f.abandoned {
				n++
			}
			f.mu.Unlock()
		}
		return n
	}

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	const clients = 40 // 160 MiB of copies, were each one held
	for i := range clients {
		slowClient(t, g, "/cache/c?key=big", 4<<10)
		// One at a time, each after the last call is done, so that none
		// shares another's call: the worst case.
		waitFor(t, func() bool { return sw.gets.Load() == int64(i+1) && inFlight() == 0 })
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	if bound := int64(maxHeldBytes + 4*len(value)); grew > bound {
		t.Fatalf("%d clients that do not read a %d MiB value grew the heap by %d MiB (held by shared calls: %d MiB), want at most %d MiB",
			clients, len(value)>>20, grew>>20, rs.reads.held.Load()>>20, bound>>20)
	}
	// Everyone else is still answered, in full.
	if r := g.get("/cache/c?key=big"); r.status != 200 || r.body != string(value) {
		t.Fatalf("another client got %d and %d bytes", r.status, len(r.body))
	}
}

// One address whose connections do not read cannot take the region's
// bound on shared answers: past its own share its GETs are proxied one
// call each, and another address's reads are still shared and cached. The
// GETs come in one burst: the bounds hold for calls whose answers have not
// arrived yet (each reserves its answer's size when its headers arrive;
// before that, 64 calls started at once from one address held 5 MiB each,
// 60 times its share, in a hostile review).
func TestOneAddressCannotTakeTheSharedCallsFromOthers(t *testing.T) {
	g, sw, _, up := readsGatewayTimeout(t, "10s", "\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n")
	value := make([]byte, 4<<20)
	_, _ = rand.Read(value)
	// Six keys of 4 MiB: 24 MiB of answers, were each one held, past the
	// address's 16 MiB share.
	const keys = 6
	for i := range keys {
		expect(t, g.do(http.MethodPut, fmt.Sprintf("/cache/c?key=big%d&ttl_seconds=600", i), bytes.NewReader(value)), 204, "")
	}
	expect(t, g.put("/cache/c?key=small&ttl_seconds=600", "v"), 204, "")
	rs := pooledRegionState(t, "r", up.URL)
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := range keys {
		slowClient(t, g, fmt.Sprintf("/cache/c?key=big%d", i), 4<<10)
	}
	waitFor(t, func() bool { return sw.gets.Load() == keys })
	if held := rs.reads.held.Load(); held > maxHeldPerClient {
		t.Errorf("one address's shared calls hold %d MiB, more than its share (%d MiB)", held>>20, maxHeldPerClient>>20)
	}
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grew, bound := int64(after.HeapAlloc)-int64(before.HeapAlloc), int64(maxHeldPerClient+4*len(value)); grew > bound {
		t.Errorf("%d GETs of %d MiB values that are not read grew the heap by %d MiB, want at most %d MiB", keys, len(value)>>20, grew>>20, bound>>20)
	}
	// Another address: its read is shared, and cached (a GET proxied one
	// call each, past the bounds, would not be): once the client has its
	// whole answer, its next read is a hit.
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	cacheStatus := func() string {
		resp, err := other.Get(g.base + "/cache/c?key=small")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.Header.Get("Cache-Status")
	}
	if cs := cacheStatus(); cs != "momento-gateway; fwd=miss" {
		t.Fatalf("first read from 127.0.0.2: Cache-Status %q, want a miss", cs)
	}
	if cs := cacheStatus(); !strings.HasPrefix(cs, "momento-gateway; hit") {
		t.Fatalf("second read from 127.0.0.2: Cache-Status %q, want a hit", cs)
	}
}

// Several addresses whose connections do not read can hold the region's
// whole bound with large answers, each within its share; small answers
// are not counted against it, so everyone's small reads are still shared
// and cached. (Before, a full bound sent every GET one call each: four
// addresses switched coalescing and the local cache off for all, and a
// region enforcing Momento's limits answered 429 to 60 % of reads, in a
// hostile review.)
func TestAFullBoundLeavesSmallAnswersShared(t *testing.T) {
	up := largeAnswersRegion(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 10s\n\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n\t}")
	expect(t, g.put("/cache/c?key=small&ttl_seconds=600", "v"), 204, "")
	rs := pooledRegionState(t, "r", up.URL)
	// Four addresses, two unread 8 MiB answers each: 16 MiB, each
	// address's share, and 64 MiB in all, the region's bound.
	for a := range 4 {
		for k := range 2 {
			slowClientFrom(t, g, fmt.Sprintf("/cache/c?key=large-%d-%d", a, k), 4<<10, net.IPv4(127, 0, 0, byte(2+a)))
		}
	}
	waitFor(t, func() bool { return rs.reads.held.Load() == maxHeldBytes })
	// Another address reads a small item: shared, and so cached.
	for i, want := range []string{"momento-gateway; fwd=miss", "momento-gateway; hit"} {
		r := g.get("/cache/c?key=small")
		if cs := r.header.Get("Cache-Status"); r.status != 200 || !strings.HasPrefix(cs, want) {
			t.Fatalf("read %d of a small item with the bound full: %d, Cache-Status %q, want %q", i+1, r.status, cs, want)
		}
	}
	if st := rs.reads.stats(); st.unshared != 0 {
		t.Errorf("%d GETs went unshared, want none", st.unshared)
	}
}

// largeAnswersRegion is the embedded backend (token "t"), except that a
// GET of any key starting "large" answers 8 MiB, with its Content-Length
// (more than Momento's largest item, and no upload needed).
func largeAnswersRegion(t *testing.T) *upstream {
	t.Helper()
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	large := bytes.Repeat([]byte("01234567"), 1<<20)
	return newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.HasPrefix(r.URL.Query().Get("key"), "large") {
			w.Header().Set("Content-Length", strconv.Itoa(len(large)))
			_, _ = w.Write(large)
			return
		}
		lh.HTTPHandler().ServeHTTP(w, r)
	}))
}

// Clients Caddy knows no IP address for, on a unix socket, are one
// address: together they get one share of what shared calls hold. (They
// had none, and one such client took the region's whole bound in a
// hostile review.)
func TestClientsOnAUnixSocketAreOneAddress(t *testing.T) {
	up := largeAnswersRegion(t)
	sock := filepath.Join(t.TempDir(), "gateway.sock")
	runCaddyfile(t, func(_ int, logPath string) string {
		return globalOptions("off", logPath) + "http:// {\n\tbind unix/" + sock + "\n\tmomento {\n" + regionBlock("r", up.URL, "t") + "\t\ttimeout 10s\n\t}\n}\n"
	})
	rs := pooledRegionState(t, "r", up.URL)
	// Three unread 8 MiB answers, from three connections: two fit the
	// share, the third goes direct to its client.
	for i := range 3 {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		_ = conn.(*net.UnixConn).SetReadBuffer(4 << 10)
		if _, err := fmt.Fprintf(conn, "GET /cache/c?key=large%d HTTP/1.1\r\nHost: x\r\n\r\n", i); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return rs.reads.stats().unshared == 1 })
	if held := rs.reads.held.Load(); held != maxHeldPerClient {
		t.Errorf("clients on a unix socket hold %d MiB in shared calls, want one share, %d MiB", held>>20, maxHeldPerClient>>20)
	}
}

// A client that joins other addresses' calls and stops reading keeps
// their answers in memory, but on its own share: each client is charged the
// answer while it is in the call, and the address that started a call gets
// its share back as soon as its client has the answer. (Before, the
// starter's address was charged until the last client left: an attacker
// joining a victim's calls could use up the victim's share.)
func TestJoiningOthersCallsSpendsYourOwnShare(t *testing.T) {
	g, sw, _, up := readsGatewayTimeout(t, "10s", "\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n")
	value := make([]byte, 4<<20)
	_, _ = rand.Read(value)
	for i := range 4 {
		expect(t, g.do(http.MethodPut, fmt.Sprintf("/cache/c?key=big%d&ttl_seconds=600", i), bytes.NewReader(value)), 204, "")
	}
	expect(t, g.put("/cache/c?key=small&ttl_seconds=600", "v"), 204, "")
	rs := pooledRegionState(t, "r", up.URL)
	victim := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3)}}).DialContext}}
	get := func(key string) response {
		resp, err := victim.Get(g.base + "/cache/c?key=" + key)
		if err != nil {
			return response{status: -1, body: err.Error()}
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return response{status: resp.StatusCode, body: string(b), header: resp.Header}
	}

	// The victim starts four calls (its whole 16 MiB share), held at the
	// region until a client of 127.0.0.1 that never reads has joined each.
	hold := make(chan struct{})
	sw.set("", hold)
	answers := make(chan response, 4)
	for i := range 4 {
		go func() { answers <- get(fmt.Sprintf("big%d", i)) }()
	}
	waitFor(t, func() bool { return sw.gets.Load() == 4 })
	for i := range 4 {
		slowClient(t, g, fmt.Sprintf("/cache/c?key=big%d", i), 4<<10)
	}
	waitFor(t, func() bool { return rs.reads.coalesced.Load() == 4 })
	sw.set("", nil)
	close(hold)
	for range 4 {
		if r := <-answers; r.status != 200 || r.body != string(value) {
			t.Fatalf("the victim got %d and %d bytes", r.status, len(r.body))
		}
	}
	// The answers are still held for the client that does not read, but
	// the victim's reads are shared and cached again.
	if cs := get("small").header.Get("Cache-Status"); cs != "momento-gateway; fwd=miss" {
		t.Fatalf("the victim's first read: Cache-Status %q, want a miss", cs)
	}
	if cs := get("small").header.Get("Cache-Status"); !strings.HasPrefix(cs, "momento-gateway; hit") {
		t.Fatalf("the victim's second read: Cache-Status %q, want a hit (its share is still taken)", cs)
	}
}

// holdThreeUnread stores value under big0, big1 and big2, and has
// 127.0.0.1 ask for each on a connection that does not read: with a value
// of 5 MiB, 15 MiB of that address's 16 MiB share are held.
func holdThreeUnread(t *testing.T, g *gateway, up *upstream, value []byte) *regionState {
	t.Helper()
	for i := range 3 {
		expect(t, g.do(http.MethodPut, fmt.Sprintf("/cache/c?key=big%d&ttl_seconds=600", i), bytes.NewReader(value)), 204, "")
	}
	rs := pooledRegionState(t, "r", up.URL)
	for i := range 3 {
		slowClient(t, g, fmt.Sprintf("/cache/c?key=big%d", i), 4<<10)
	}
	waitFor(t, func() bool { return rs.reads.held.Load() == 3*int64(len(value)) })
	return rs
}

// An answer without a Content-Length (chunked) reserves Momento's largest
// item when its headers arrive; one that does not fit is direct, whole to
// the client that asked. (It used to reserve nothing and then run into the
// bounds mid-answer: cut off, for every client of the call.)
func TestAnAnswerOfUnknownLengthPastTheBoundsArrivesWhole(t *testing.T) {
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	chunked := bytes.Repeat([]byte("0123456789abcdef"), 6<<20/16)
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && r.URL.Query().Get("key") == "chunked" {
			for part := range slices.Chunk(chunked, 64<<10) {
				_, _ = w.Write(part)
				w.(http.Flusher).Flush()
			}
			return
		}
		lh.HTTPHandler().ServeHTTP(w, r)
	}))
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 10s\n\t}")
	rs := holdThreeUnread(t, g, up, make([]byte, 5<<20-100))
	r := g.get("/cache/c?key=chunked")
	if r.status != 200 || r.body != string(chunked) {
		t.Fatalf("got %d and %d of %d bytes", r.status, len(r.body), len(chunked))
	}
	// It went to its client alone, as the operator's figures say: the
	// 5 MiB it reserves did not fit the 1 MiB left of the share.
	if st := rs.reads.stats(); st.unshared != 1 {
		t.Fatalf("%d GETs answered unshared, want 1 (the chunked answer)", st.unshared)
	}
}

// An answer that does not fit the bounds when its headers arrive is not
// kept: it streams to the client that started the call, at its pace, and a
// client that had joined the call makes one of its own. Both get the whole
// value.
func TestAnAnswerPastTheBoundsGoesToItsStarterAlone(t *testing.T) {
	g, sw, _, up := readsGatewayTimeout(t, "10s", "")
	value := make([]byte, 5<<20-100)
	_, _ = rand.Read(value)
	expect(t, g.do(http.MethodPut, "/cache/c?key=big3&ttl_seconds=600", bytes.NewReader(value)), 204, "")
	rs := holdThreeUnread(t, g, up, value)

	hold := make(chan struct{})
	sw.set("", hold)
	starter := make(chan response, 1)
	go func() { starter <- g.get("/cache/c?key=big3") }()
	waitFor(t, func() bool { return sw.gets.Load() == 4 })
	other := &http.Client{Transport: &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}}).DialContext}}
	joiner := make(chan response, 1)
	go func() {
		resp, err := other.Get(g.base + "/cache/c?key=big3")
		if err != nil {
			joiner <- response{status: -1, body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		joiner <- response{status: resp.StatusCode, body: string(b), header: resp.Header}
	}()
	waitFor(t, func() bool { return rs.reads.coalesced.Load() == 1 })
	sw.set("", nil)
	close(hold)
	for name, ch := range map[string]chan response{"the starter": starter, "the joiner": joiner} {
		r := <-ch
		if r.status != 200 || r.body != string(value) {
			t.Fatalf("%s got %d and %d bytes", name, r.status, len(r.body))
		}
		if cs := r.header.Get("Cache-Status"); cs != "momento-gateway; fwd=miss" {
			t.Errorf("%s: Cache-Status %q", name, cs)
		}
	}
	if n := sw.gets.Load(); n != 5 {
		t.Errorf("the region saw %d GETs, want 5 (3 unread, the starter's, the joiner's own)", n)
	}
	if st := rs.reads.stats(); st.unshared != 2 || st.held != 3*int64(len(value)) {
		t.Errorf("read figures %+v: want 2 unshared GETs and the three unread answers held", st)
	}
	if held := rs.reads.held.Load(); held != 3*int64(len(value)) {
		t.Errorf("the shared calls hold %d bytes, want the three unread answers' %d", held, 3*len(value))
	}
}

// A hot item is renewed before it expires: its readers keep getting hits
// while a call of the gateway's own brings the region's newer value, and
// no reader waits for the region.
func TestLocalCacheRenewsHotItems(t *testing.T) {
	og, sw, up := cachedOpsGateway(t, "\t\tlocal_cache {\n\t\t\tmax_age 600ms\n\t\t}\n")
	expect(t, og.put("/cache/c?key=k&ttl_seconds=600", "v1"), 204, "")
	expect(t, og.get("/cache/c?key=k"), 200, "v1") // a miss: cached
	calls := sw.gets.Load()

	// Behind the gateway's back, straight at the region.
	req, _ := http.NewRequest(http.MethodPut, up.URL+"/cache/c?key=k&ttl_seconds=600", strings.NewReader("v2"))
	req.Header.Set("Authorization", "t")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("direct write: %v %v", resp, err)
	}
	waitFor(t, func() bool {
		r := og.get("/cache/c?key=k")
		if cs := r.header.Get("Cache-Status"); !strings.HasPrefix(cs, "momento-gateway; hit") {
			t.Fatalf("a reader of a hot item waited for the region: %d %q, Cache-Status %q", r.status, r.body, cs)
		}
		return r.body == "v2"
	})
	if n := sw.gets.Load() - calls; n != 1 {
		t.Errorf("%d calls to the region renewed one item, want 1", n)
	}
	if rd := og.regions(t)["cached"].Reads; rd.Renewals != 1 || rd.Misses != 1 || rd.Saved != rd.Hits-1 {
		t.Errorf("admin API reads: %+v", rd)
	}
}

// cachedOpsGateway is a gateway with the admin API, whose region "cached"
// is momento_local behind a switch.
func cachedOpsGateway(t *testing.T, directives string) (*opsGateway, *switchable, *upstream) {
	t.Helper()
	sw, _, up := switchedRegion(t)
	return startOpsGateway(t, "\tmomento {\n"+regionBlock("cached", up.URL, "t")+directives+"\t}"), sw, up
}

// A renewal is a call to the region like the miss it replaces: a client
// past its max_ops_per_client does not start one, however often it reads.
func TestRenewalsSpendTheReadersBudget(t *testing.T) {
	sw, _, up := switchedRegion(t)
	g := runCaddyfile(t, func(port int, logPath string) string {
		return strings.Replace(globalOptions("off", logPath), "{\n", "{\n\tmomento {\n\t\tmax_ops_per_client 1\n\t}\n", 1) +
			fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n\tmomento {\n%s\t\tlocal_cache {\n\t\t\tmax_age 400ms\n\t\t}\n\t}\n}\n", port, regionBlock("r", up.URL, "t"))
	})
	clientOps().InvalidateAll() // budgets outlive configs: start from full
	// Written straight at the region, so the one call of the budget (a
	// token a second) is the miss below.
	req, _ := http.NewRequest(http.MethodPut, up.URL+"/cache/c?key=k&ttl_seconds=600", strings.NewReader("v"))
	req.Header.Set("Authorization", "t")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 204 {
		t.Fatalf("direct write: %v %v", resp, err)
	}
	expect(t, g.get("/cache/c?key=k"), 200, "v")
	filled := time.Now()
	calls := sw.gets.Load()
	// Hits in the last quarter of max_age, with a budget refilled to a
	// third of a call at most.
	for time.Since(filled) < 370*time.Millisecond {
		if r := g.get("/cache/c?key=k"); !strings.HasPrefix(r.header.Get("Cache-Status"), "momento-gateway; hit") {
			t.Fatalf("read %v after the fill: %d, Cache-Status %q", time.Since(filled), r.status, r.header.Get("Cache-Status"))
		}
	}
	if n := sw.gets.Load() - calls; n != 0 {
		t.Fatalf("a client past its max_ops_per_client started %d renewals", n)
	}
}

// Writes to other items, or writes the region refused, do not keep an item
// read meanwhile from being cached.
func TestOnlyWritesOfTheItemKeepItOutOfTheCache(t *testing.T) {
	// A region with the cache c only, and items of 1 KiB at most.
	lh, err := momentolocal.New(momentolocal.Handler{Token: "t", Caches: []string{"c"}, MaxItemSize: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lh.Close() })
	sw := &switchable{next: lh.HTTPHandler()}
	up := newUpstream(t, sw)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n\t}")
	expect(t, g.put("/cache/c?key=hot&ttl_seconds=600", "v"), 204, "")
	// Another item, in another shard of the write counts.
	rr := &pooledRegionState(t, "r", up.URL).reads
	other := "other"
	for i := 0; rr.writeShard(readKey{"c", other}) == rr.writeShard(readKey{"c", "hot"}); i++ {
		other = fmt.Sprintf("other-%d", i)
	}
	hold := make(chan struct{})
	sw.set("", hold)
	got := make(chan response, 1)
	go func() { got <- g.get("/cache/c?key=hot") }()
	waitFor(t, func() bool { return sw.gets.Load() == 1 }) // the call is at the region
	expect(t, g.put("/cache/c?key="+other+"&ttl_seconds=600", "w"), 204, "")
	expect(t, g.put("/cache/missing-cache?key=hot&ttl_seconds=600", "w"), 404, "Cache Not Found")
	expect(t, g.put("/cache/c?key=hot&ttl_seconds=600", strings.Repeat("w", 2<<10)), 413, "") // refused: nothing changed
	sw.set("", nil)
	close(hold)
	expect(t, <-got, 200, "v")
	if r := g.get("/cache/c?key=hot"); !strings.HasPrefix(r.header.Get("Cache-Status"), "momento-gateway; hit") {
		t.Fatalf("the item was not cached: Cache-Status %q", r.header.Get("Cache-Status"))
	}
}

// The flights themselves: a call whose last client left before the answer
// was whole is never joined, and its answer is not whole.
func TestAnAbandonedFlightIsNotJoined(t *testing.T) {
	up := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "2000")
		_, _ = w.Write(bytes.Repeat([]byte("v"), 1000))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the rest never comes
	}))
	h := provisionHandler(t, Handler{Regions: []RegionConfig{{Name: "r", Endpoint: up.URL, Token: "t"}}})
	r := httptest.NewRequest(http.MethodGet, "/cache/c?key=k", nil)
	c, _ := parseCall(r)
	c.region = h.regionFor(c.cache)
	rr := &c.region.state.reads
	f1, _, _ := rr.join(h, r, c)
	if st, _, _, ok := f1.wait(context.Background()); !ok || st != 200 {
		t.Fatalf("first call: %d %v", st, ok)
	}
	f1.leave(true, "") // its only client: the call is abandoned
	f2, joined, _ := rr.join(h, r, c)
	defer f2.leave(true, "")
	if joined || f2 == f1 {
		t.Fatal("a GET joined a call all of whose clients had left")
	}
	if _, _, body, whole := f1.result(); whole {
		t.Fatalf("the abandoned call's %d bytes were taken for a whole answer", len(body))
	}
}

// A client being sent a large cached value keeps that value in memory even
// after its entry leaves the cache, which then no longer counts it. So the
// value counts against the region's bound on what shared calls hold until
// the client has it; when the bound cannot take it, the client's answer is
// broken off, and it reads again. (Before, nothing counted it: slow
// clients could keep any number of values the cache had let go.)
func TestValuesLeavingTheCacheWhileReadCountAgainstTheBound(t *testing.T) {
	up := largeAnswersRegion(t)
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 10s\n\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t\tmax_size 12MiB\n\t\t}\n\t}")
	rs := pooledRegionState(t, "r", up.URL)
	const size = 8 << 20
	answer := func(conn net.Conn) (n int64, err error) {
		t.Helper()
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			return 0, err
		}
		if cs := resp.Header.Get("Cache-Status"); resp.StatusCode != 200 || !strings.HasPrefix(cs, "momento-gateway; hit") {
			t.Fatalf("a slow client's read: %d, Cache-Status %q, want a hit", resp.StatusCode, cs)
		}
		return io.Copy(io.Discard, resp.Body)
	}

	// A slow client reads a cached value; a write through the gateway
	// makes the cache forget it: the slow client's copy now counts.
	expect(t, g.get("/cache/c?key=large-a"), 200, "01234567")
	// (256 KiB: with the gateway's socket buffer, well short of the value,
	// yet enough for the client to read at full speed when it does.)
	slow := slowClientFrom(t, g, "/cache/c?key=large-a", 256<<10, nil)
	waitFor(t, func() bool { return rs.reads.stats().hits == 1 })
	expect(t, g.put("/cache/c?key=large-a&ttl_seconds=60", "written"), 204, "")
	waitFor(t, func() bool { return rs.reads.held.Load() == size })
	// It reads its whole answer, and the bytes are given back.
	if n, err := answer(slow); n != size || err != nil {
		t.Fatalf("the slow client got %d bytes (%v), want %d", n, err, size)
	}
	waitFor(t, func() bool { return rs.reads.held.Load() == 0 })

	// With the bound full (as slow clients of shared calls hold it), a
	// value that leaves the cache while read cannot be kept: its slow
	// client's answer is broken off.
	expect(t, g.get("/cache/c?key=large-b"), 200, "01234567")
	rs.reads.held.Add(maxHeldBytes)
	defer rs.reads.held.Add(-maxHeldBytes)
	slow = slowClientFrom(t, g, "/cache/c?key=large-b", 256<<10, nil)
	waitFor(t, func() bool { return rs.reads.stats().hits == 2 })
	expect(t, g.put("/cache/c?key=large-b&ttl_seconds=60", "written"), 204, "") // the cache forgets it
	waitFor(t, func() bool { return rs.reads.stats().cutOff == 1 })
	// Past the bound it is counted all the same while in memory (which
	// keeps the bound full), until its client is cut off: at once if the
	// client had room for more, else when it reads on.
	if held := rs.reads.held.Load(); held != maxHeldBytes+size && held != maxHeldBytes {
		t.Errorf("held %d bytes, want the bound's %d, and the value's %d while its client is in", held, maxHeldBytes, size)
	}
	if n, err := answer(slow); n >= size || err == nil {
		t.Errorf("with the bound full, the slow client got %d bytes (%v), want its answer broken off", n, err)
	}
	waitFor(t, func() bool { return rs.reads.held.Load() == maxHeldBytes })

	// Held past the bound (as while such clients are being cut off), the
	// region still shares and caches small values.
	rs.reads.held.Add(size)
	defer rs.reads.held.Add(-size)
	expect(t, g.put("/cache/c?key=small&ttl_seconds=60", "v"), 204, "")
	for i, want := range []string{"momento-gateway; fwd=miss", "momento-gateway; hit"} {
		if r := g.get("/cache/c?key=small"); r.status != 200 || !strings.HasPrefix(r.header.Get("Cache-Status"), want) {
			t.Errorf("read %d of a small item with the bound past its limit: %d, Cache-Status %q, want %q", i+1, r.status, r.header.Get("Cache-Status"), want)
		}
	}
}
