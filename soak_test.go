package momento

import (
	"fmt"
	"io"
	"math/rand"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// The soak test: concurrent clients set, get and delete through the real
// handler to two regions while one of them cycles through faults. It runs
// only when MOMENTO_SOAK_SECONDS asks for it (.ci/run sets 60), so a plain
// `go test ./...` stays quick.

type phase int

const (
	phaseHealthy phase = iota
	phase5xx
	phaseHang
	phaseReset
	phaseRefused
	phaseSlow
	phaseRecovered
	phaseCount
)

func (p phase) String() string {
	return [...]string{"healthy", "5xx", "hang", "reset", "refused", "slow", "recovered"}[p]
}

// expected says which statuses a client may see from the faulty region in
// a phase. 503 is always possible: the breaker may be open from the phase
// before.
func (p phase) expected(status int) bool {
	switch status {
	case 503:
		return true
	case 200, 204, 404:
		return p == phaseHealthy || p == phaseSlow || p == phaseRecovered
	case 500:
		return p == phase5xx
	case 504:
		return p == phaseHang
	case 502:
		return p == phaseReset || p == phaseRefused
	}
	return false
}

// faultServer is an upstream in front of an embedded backend that injects
// the current phase's fault. "refused" really closes the listening socket.
type faultServer struct {
	addr    string
	backend http.Handler
	phase   atomic.Int32
	hits    atomic.Int64
	faults  [phaseCount]atomic.Int64

	mu  sync.Mutex
	srv *http.Server
}

func (f *faultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.hits.Add(1)
	p := phase(f.phase.Load())
	switch p {
	case phase5xx:
		f.faults[p].Add(1)
		w.WriteHeader(http.StatusInternalServerError)
		_, _ = io.WriteString(w, "injected fault")
		return
	case phaseHang:
		f.faults[p].Add(1)
		<-r.Context().Done() // until the gateway's timeout gives up
		return
	case phaseReset:
		f.faults[p].Add(1)
		if conn, _, err := w.(http.Hijacker).Hijack(); err == nil {
			_ = conn.(*net.TCPConn).SetLinger(0)
			conn.Close()
		}
		return
	case phaseSlow:
		f.faults[p].Add(1)
		time.Sleep(100 * time.Millisecond) // the fault itself: a slow region
	}
	f.backend.ServeHTTP(w, r)
}

func (f *faultServer) start(t *testing.T) {
	ln, err := net.Listen("tcp", f.addr)
	if err != nil {
		t.Fatalf("fault server: %v", err)
	}
	f.addr = ln.Addr().String()
	srv := &http.Server{Handler: f}
	f.mu.Lock()
	f.srv = srv
	f.mu.Unlock()
	go func() { _ = srv.Serve(ln) }()
}

func (f *faultServer) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.srv != nil {
		_ = f.srv.Close() // listener and connections: new dials are refused
		f.srv = nil
	}
}

// model is what clients were told: for each key, the value of the last
// acknowledged set, or "" after an acknowledged delete.
type model struct {
	mu     sync.Mutex
	acked  map[string]string
	failed map[string]bool // values whose set was answered with an error
}

func TestSoakFaultInjection(t *testing.T) {
	s, err := strconv.Atoi(os.Getenv("MOMENTO_SOAK_SECONDS"))
	if err != nil || s <= 0 {
		t.Skip("the soak test runs with MOMENTO_SOAK_SECONDS=<seconds>, as .ci/run does")
	}
	total := time.Duration(s) * time.Second
	const timeout = time.Second
	const clients = 8

	healthyStore, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	faultyStore, err := momentolocal.New(momentolocal.Handler{Token: "t"})
	if err != nil {
		t.Fatal(err)
	}
	defer healthyStore.Close()
	defer faultyStore.Close()
	healthy := newUpstream(t, healthyStore.HTTPHandler())
	fs := &faultServer{addr: "127.0.0.1:0", backend: faultyStore.HTTPHandler()}
	fs.start(t)
	defer fs.stop()

	g := startGateway(t, "\tmomento {\n"+regionBlock("soak-healthy", healthy.URL, "t")+regionBlock("soak-faulty", "http://"+fs.addr, "t")+
		"\t\troute faulty-* soak-faulty\n\t\tdefault_region soak-healthy\n"+
		"\t\ttimeout 1s\n\t\tbreaker {\n\t\t\tfailures 3\n\t\t\topen_for 1s\n\t\t}\n\t}")
	g.client.Timeout = 10 * time.Second
	g.client.Transport = &http.Transport{MaxIdleConnsPerHost: clients}
	breaker := pooledBreaker(t, "soak-faulty", "http://"+fs.addr)

	// Baselines, with the gateway warm.
	expect(t, g.get("/cache/faulty-warm?key=k"), 404, "Key Not Found")
	expect(t, g.get("/cache/healthy-warm?key=k"), 404, "Key Not Found")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	goroutinesBefore, fdsBefore, heapBefore := runtime.NumGoroutine(), openFDs(), ms.HeapAlloc

	m := &model{acked: map[string]string{}, failed: map[string]bool{}}
	var (
		requests, healthyRequests, healthyFailures, unexpected, rejected atomic.Int64
		faultyServed                                                     atomic.Int64 // faulty-region answers that were not breaker rejections
		refusedDials                                                     atomic.Int64 // 502s while the region refused connections
		maxLatency                                                       [phaseCount]atomic.Int64
		opened                                                           [phaseCount]atomic.Bool
		problems                                                         = make(chan string, 100)
	)
	report := func(format string, args ...any) {
		select {
		case problems <- fmt.Sprintf(format, args...):
		default:
		}
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(c)))
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				cache := "healthy-" + strconv.Itoa(c)
				if rng.Intn(2) == 0 {
					cache = "faulty-" + strconv.Itoa(c)
				}
				key := "k" + strconv.Itoa(rng.Intn(8))
				id := cache + "/" + key
				value := fmt.Sprintf("%s#%d-%d", id, c, n)
				var method, target string
				var body io.Reader
				switch x := rng.Intn(20); {
				case x < 10:
					method, target, body = http.MethodPut, "/cache/"+cache+"?key="+key+"&ttl_seconds=600", strings.NewReader(value)
				case x < 17:
					method, target = http.MethodGet, "/cache/"+cache+"?key="+key
				default:
					method, target = http.MethodDelete, "/cache/"+cache+"?key="+key
				}
				startPhase := phase(fs.phase.Load())
				start := time.Now()
				req, _ := http.NewRequest(method, g.base+target, body)
				resp, err := g.client.Do(req)
				elapsed := time.Since(start)
				if err != nil {
					report("%s %s: %v", method, target, err)
					continue
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				requests.Add(1)
				endPhase := phase(fs.phase.Load())
				if elapsed > timeout+time.Second {
					report("%s %s took %s (timeout %s)", method, target, elapsed, timeout)
				}
				for _, p := range []phase{startPhase, endPhase} {
					for cur := maxLatency[p].Load(); int64(elapsed) > cur && !maxLatency[p].CompareAndSwap(cur, int64(elapsed)); cur = maxLatency[p].Load() {
					}
				}

				if strings.HasPrefix(cache, "healthy-") {
					healthyRequests.Add(1)
					if resp.StatusCode != 200 && resp.StatusCode != 204 && resp.StatusCode != 404 {
						healthyFailures.Add(1)
						report("healthy region answered %d %q", resp.StatusCode, got)
					}
				} else {
					if resp.StatusCode == 502 && startPhase == phaseRefused {
						refusedDials.Add(1)
					}
					if resp.StatusCode == 503 {
						rejected.Add(1)
						opened[startPhase].Store(true)
					} else {
						faultyServed.Add(1)
					}
					if !startPhase.expected(resp.StatusCode) && !endPhase.expected(resp.StatusCode) {
						unexpected.Add(1)
						report("faulty region in phase %s..%s answered %d %q", startPhase, endPhase, resp.StatusCode, got)
					}
				}

				// The model: every acknowledged write is what a read sees.
				m.mu.Lock()
				switch {
				case method == http.MethodPut && resp.StatusCode == 204:
					m.acked[id] = value
				case method == http.MethodPut:
					m.failed[value] = true
				case method == http.MethodDelete && resp.StatusCode == 204:
					m.acked[id] = ""
				case method == http.MethodGet && resp.StatusCode == 200:
					if string(got) != m.acked[id] {
						report("lost write: GET %s returned %q, last acknowledged %q (failed set: %v)", id, got, m.acked[id], m.failed[string(got)])
					}
				case method == http.MethodGet && resp.StatusCode == 404:
					if m.acked[id] != "" {
						report("lost write: GET %s is a miss, last acknowledged %q", id, m.acked[id])
					}
				}
				m.mu.Unlock()
			}
		}()
	}

	// Cycle the faulty region through its phases.
	step := total / time.Duration(phaseCount)
	for p := phaseHealthy; p < phaseCount; p++ {
		if p == phaseRefused {
			fs.stop()
		}
		if p == phaseRefused+1 {
			fs.start(t)
		}
		fs.phase.Store(int32(p))
		<-time.After(step)
	}
	close(stop)
	wg.Wait()

	// Every acknowledged write is still there, byte for byte.
	lost := 0
	for id, want := range m.acked {
		cache, key, _ := strings.Cut(id, "/")
		r := g.get("/cache/" + cache + "?key=" + key)
		if (want == "" && r.status != 404) || (want != "" && (r.status != 200 || r.body != want)) {
			lost++
			report("after the run, %s is %d %q; last acknowledged %q", id, r.status, r.body, want)
		}
	}

	// Recovery: the breaker closed again and the region serves.
	if s := breaker.state(); s != gobreaker.StateClosed {
		report("breaker is %s after recovery", s)
	}
	for _, p := range []phase{phase5xx, phaseHang, phaseReset, phaseRefused} {
		if !opened[p].Load() {
			report("the breaker never rejected during phase %s", p)
		}
	}
	// While open, the region saw nothing: every upstream hit has a
	// non-rejected answer (the transport may retry a reset connection once).
	if hits := fs.hits.Load() - 1; hits > 2*faultyServed.Load() {
		report("the faulty region saw %d requests for %d non-rejected answers", hits, faultyServed.Load())
	}

	// No leaks: let connections go idle and close, then compare.
	g.client.CloseIdleConnections()
	for _, rg := range runningRegions() {
		rg.state.transport.CloseIdleConnections()
	}
	waitFor(t, func() bool { return runtime.NumGoroutine() <= goroutinesBefore+2 && openFDs() <= fdsBefore+2 })
	runtime.GC()
	runtime.ReadMemStats(&ms)
	goroutinesAfter, fdsAfter, heapAfter := runtime.NumGoroutine(), openFDs(), ms.HeapAlloc
	if heapAfter > heapBefore+32<<20 {
		report("heap grew from %d to %d bytes", heapBefore, heapAfter)
	}

	var lat strings.Builder
	for p := phaseHealthy; p < phaseCount; p++ {
		fmt.Fprintf(&lat, " %s=%dms", p, time.Duration(maxLatency[p].Load()).Milliseconds())
	}
	var faults strings.Builder
	for p := phase5xx; p <= phaseSlow; p++ {
		n := fs.faults[p].Load()
		if p == phaseRefused {
			n = refusedDials.Load()
		}
		fmt.Fprintf(&faults, " %s=%d", p, n)
	}
	summary := fmt.Sprintf("soak: %s (%s per phase), %d requests (healthy region %d, %d failed), faults injected:%s, breaker rejections %d, unexpected statuses %d, lost writes %d, max latency per phase:%s, goroutines %d→%d, fds %d→%d, heap %.1f→%.1f MiB",
		total, step, requests.Load(), healthyRequests.Load(), healthyFailures.Load(), faults.String(), rejected.Load(),
		unexpected.Load(), lost, lat.String(), goroutinesBefore, goroutinesAfter, fdsBefore, fdsAfter,
		float64(heapBefore)/(1<<20), float64(heapAfter)/(1<<20))
	fmt.Println(summary)
	close(problems)
	for p := range problems {
		t.Error(p)
	}
}

// openFDs counts this process's open file descriptors (Linux).
func openFDs() int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	return len(entries)
}
