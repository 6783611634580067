package momento

import (
	"cmp"
	"fmt"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/maypok86/otter/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"
)

// Defaults of the limits that keep one client from using up the account
// (Momento admits 100 concurrent subscriptions per region by default) or
// the gateway's memory.
const (
	defaultMaxSubscriptions = 100
	defaultMaxWaiting       = 10000
)

// A client of a shared call must take stallPart of the answer within
// clientStall, or it is dropped: the call holds the answer until every
// client has it (see maxHeldBytes). An event stream's client must take
// each write within clientStall likewise. A browser on a slow link takes
// 64 KiB in far less; a client that stopped reading does not.
const (
	stallPart   = 64 << 10
	clientStall = 30 * time.Second
)

// stallGuard holds a client to clientStall: it arms the connection's write
// deadline while the gateway writes to the client, and disarms it while the
// gateway waits for something to write, since on HTTP/2 a deadline that
// passes resets the stream, writing or not. (Where the connection cannot
// take a deadline, the client is held by the server's own timeouts.)
type stallGuard struct {
	rc    *http.ResponseController
	stall time.Duration
	armed bool
}

func (g *stallGuard) arm() {
	_ = g.rc.SetWriteDeadline(time.Now().Add(g.stall))
	g.armed = true
}

func (g *stallGuard) disarm() {
	if g.armed {
		_ = g.rc.SetWriteDeadline(time.Time{})
		g.armed = false
	}
}

// waitRetryAfter is what a client refused for a limit on waiting is told
// to wait: long polls end all the time, so a slot is soon free.
const waitRetryAfter = time.Second

// waiters counts the clients waiting on topics in this process, in every
// config (a reload does not reset it): in total, per client address (for
// max_waiting_per_client), and per network (for the fair shares).
var waiters struct {
	total    atomic.Int64
	mu       sync.Mutex
	byClient map[string]int
	shares   shares
}

// waitSlot is one waiting client's hold on the limits; release gives it
// back.
type waitSlot struct {
	client  string // set when max_waiting_per_client counts it
	network string
	gauge   prometheus.Gauge
}

// shares shares a bounded pool of places that clients hold for a while (the
// places of clients waiting on topics, a region's subscriptions) among the
// networks holding them, as budget.go shares a region's calls a second
// (a network: an IPv4 address, an IPv6 /48). While more than a quarter of
// the pool is free, a network takes a place first come, first served. The
// last quarter, the reserve, goes only to networks holding fewer than their
// share of it: the reserve divided among the networks holding places, the
// newcomer included (at least one place each). So one network, or a few,
// can hold at most three quarters of the pool, and a client of another
// network finds a place however long they hold theirs; only many networks
// together can take the reserve. The places each network holds are counted
// here; take leaves the count of places taken, and whether the pool is full,
// to its caller (a region's hubs count theirs under their own lock), and
// takeCounted keeps both.
type shares struct {
	mu   sync.Mutex
	held map[string]int
}

// take counts one more place for network, out of capacity places of which
// used are taken, or reports that the network holds its share.
func (s *shares) take(network string, used int64, capacity int) (share int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.takeLocked(network, used, capacity)
}

func (s *shares) takeLocked(network string, used int64, capacity int) (share int, ok bool) {
	h := s.held[network]
	if reserve := capacity / 4; reserve > 0 && used >= int64(capacity-reserve) {
		n := len(s.held)
		if h == 0 {
			n++
		}
		if share = max(1, reserve/n); h >= share {
			return share, false
		}
	}
	if s.held == nil {
		s.held = map[string]int{}
	}
	s.held[network] = h + 1
	return 0, true
}

// move counts a place from one network for another.
func (s *shares) move(from, to string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[from]--; s.held[from] <= 0 {
		delete(s.held, from)
	}
	s.held[to]++
}

// takeCounted is take for a pool whose places taken are counted in used,
// which it checks and counts under the same lock: many clients asking at
// once cannot all pass the three quarters on one stale count. It reports
// full when every place is taken.
func (s *shares) takeCounted(network string, used *atomic.Int64, capacity int) (share int, full, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := used.Load()
	if n >= int64(capacity) {
		return 0, true, false
	}
	if share, ok = s.takeLocked(network, n, capacity); ok {
		used.Add(1)
	}
	return share, false, ok
}

// give gives back a place network took.
func (s *shares) give(network string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held[network]--; s.held[network] <= 0 {
		delete(s.held, network)
	}
}

// Kinds of waiting clients, as the metrics name them.
const (
	waitLongPoll = "long_poll"
	waitSSE      = "sse"
)

// admitWaiter takes a place for a client that is about to wait on a topic
// (a long poll or an event stream), or refuses it with 429, naming the
// limit, before anything is sent to the region.
func (a *App) admitWaiter(r *http.Request, kind string) (*waitSlot, *refusal) {
	limits := a.limits()
	client := clientAddress(r)
	network := budgetGroup(client)
	switch share, full, ok := waiters.shares.takeCounted(network, &waiters.total, limits.maxWaiting); {
	case full:
		return nil, tooMany(fmt.Sprintf("this gateway has its max_waiting (%d) clients waiting on topics", limits.maxWaiting))
	case !ok:
		return nil, tooMany(fmt.Sprintf("this gateway's max_waiting (%d) places are nearly all taken, and clients of %s hold their share (%d) of the rest", limits.maxWaiting, network, share))
	}
	slot := &waitSlot{network: network, gauge: metrics.waiting.WithLabelValues(kind)}
	if limits.maxPerClient > 0 {
		waiters.mu.Lock()
		if waiters.byClient == nil {
			waiters.byClient = map[string]int{}
		}
		if waiters.byClient[client] >= limits.maxPerClient {
			waiters.mu.Unlock()
			waiters.total.Add(-1)
			waiters.shares.give(network)
			return nil, tooMany(fmt.Sprintf("client %s has its max_waiting_per_client (%d) requests waiting on topics", client, limits.maxPerClient))
		}
		waiters.byClient[client]++
		waiters.mu.Unlock()
		slot.client = client
	}
	slot.gauge.Inc()
	return slot, nil
}

// release gives the slot's places back.
func (s *waitSlot) release() {
	waiters.shares.give(s.network)
	if s.client != "" {
		waiters.mu.Lock()
		if waiters.byClient[s.client]--; waiters.byClient[s.client] <= 0 {
			delete(waiters.byClient, s.client)
		}
		waiters.mu.Unlock()
	}
	s.gauge.Dec()
	waiters.total.Add(-1)
}

// openSubscription takes one of the region's max_subscriptions for a long
// poll forwarded as it is (the hub off), within the client network's
// share; release gives it back.
func openSubscription(rg *region, network string) (release func(), rf *refusal) {
	switch share, full, ok := rg.state.subscriptionShares.takeCounted(network, &rg.state.subscriptions, rg.maxSubscriptions); {
	case full:
		return nil, tooManySubscriptions(rg)
	case !ok:
		return nil, rg.subscriptionShareRefusal(network, share, waitRetryAfter)
	}
	return func() {
		rg.state.subscriptions.Add(-1)
		rg.state.subscriptionShares.give(network)
	}, nil
}

// takeSubscriptionShare counts a subscription the client network is about
// to open (a hub it starts; callers hold the region's hubs lock) in its
// share of the region's, or refuses it, telling it to come back after wait
// (when one of its own could have ended: a hub outlives its last waiter by
// its linger).
func (rg *region) takeSubscriptionShare(network string, wait time.Duration) *refusal {
	share, ok := rg.state.subscriptionShares.take(network, rg.state.subscriptions.Load(), rg.maxSubscriptions)
	if ok {
		return nil
	}
	return rg.subscriptionShareRefusal(network, share, wait)
}

// subscriptionShareRefusal tells a client that its network holds its
// share of the region's subscriptions.
func (rg *region) subscriptionShareRefusal(network string, share int, wait time.Duration) *refusal {
	wait = max(waitRetryAfter, wait)
	return &refusal{status: http.StatusTooManyRequests, retryAfter: wait, msg: fmt.Sprintf(
		"region %s's max_subscriptions (%d) are nearly all open, and clients of %s hold their share (%d) of the rest; retry in %d s",
		rg.name, rg.maxSubscriptions, network, share, retryAfterSeconds(wait))}
}

func tooManySubscriptions(rg *region) *refusal {
	return tooMany(fmt.Sprintf("region %s has its max_subscriptions (%d) subscriptions open", rg.name, rg.maxSubscriptions))
}

func tooMany(msg string) *refusal {
	return &refusal{status: http.StatusTooManyRequests, msg: msg + "; retry in 1 s", retryAfter: waitRetryAfter}
}

// clientOps holds each client address's budget of calls to the regions
// (max_ops_per_client), in every config: a reload does not refill it.
// Addresses idle for a while are forgotten (their budget is full again by
// then), and the number kept is bounded.
var clientOps = sync.OnceValue(func() *otter.Cache[string, *rate.Limiter] {
	return otter.Must(&otter.Options[string, *rate.Limiter]{
		MaximumSize:      1 << 20,
		ExpiryCalculator: otter.ExpiryAccessing[string, *rate.Limiter](opBudgetIdle),
	})
})

// opBudgetIdle is how long an address's budget is kept after its last
// call: longer than a full budget takes to refill.
const opBudgetIdle = 10 * time.Second

// admitOp takes the call c is about to make to its region from the
// client's budget (a token bucket: up to max_ops_per_client calls at once,
// refilled at max_ops_per_client a second) and from the region's (see
// budget.go), or refuses it with 429 before anything is sent.
func (a *App) admitOp(r *http.Request, c *call) *refusal {
	client := clientAddress(r)
	now := time.Now()
	var res *rate.Reservation
	if limit := a.limits().maxOpsPerClient; limit > 0 {
		l, _ := clientOps().ComputeIfAbsent(client, func() (*rate.Limiter, bool) {
			return rate.NewLimiter(rate.Limit(limit), limit), false
		})
		if l.Burst() != limit { // a reload changed max_ops_per_client
			l.SetLimit(rate.Limit(limit))
			l.SetBurst(limit)
		}
		res = l.ReserveN(now, 1)
		if wait := res.DelayFrom(now); wait > 0 {
			res.CancelAt(now)
			return &refusal{status: http.StatusTooManyRequests, retryAfter: wait,
				msg: fmt.Sprintf("client %s has used its max_ops_per_client (%d calls a second to the regions); retry in %d s", client, limit, retryAfterSeconds(wait))}
		}
	}
	if b, configured := c.region.budget(c.op); b != nil {
		if ok, wait, limit := b.take(client, configured, now); !ok {
			if res != nil {
				res.CancelAt(now) // nothing was sent: the client's budget is as it was
			}
			return b.refusal(c.region, configured, limit, wait)
		}
	}
	return nil
}

// clientAddress is the request's client address, as Caddy determined it
// (trusted proxies included), for the per-client limits. An IPv6 client
// is its /64 network: one host is usually given a whole /64, and could
// otherwise take a fresh share of every limit from each of its addresses.
// Clients Caddy knows no IP address for (on a unix socket, unless
// trusted_proxies_unix names the proxy's header) are one address,
// noAddress, as clients behind one NAT are: never none, which would
// escape the per-address bounds.
func clientAddress(r *http.Request) string {
	ip, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	if addr, err := netip.ParseAddr(ip); err == nil && addr.Is6() && !addr.Is4In6() {
		if p, err := addr.Prefix(64); err == nil {
			return p.String()
		}
	}
	return cmp.Or(ip, noAddress)
}

// noAddress is the client address of every client without an IP address.
const noAddress = "(no IP address)"
