package momento

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of the limits that keep one client from using up the account
// (Momento admits 100 concurrent subscriptions per region by default) or
// the gateway's memory.
const (
	defaultMaxSubscriptions = 100
	defaultMaxWaiting       = 10000
)

// waitRetryAfter is what a client refused for a limit on waiting is told
// to wait: long polls end all the time, so a slot is soon free.
const waitRetryAfter = time.Second

// waiters counts the clients waiting on topics in this process, in every
// config (a reload does not reset it), in total and per client address.
var waiters struct {
	total    atomic.Int64
	mu       sync.Mutex
	byClient map[string]int
}

// waitSlot is one waiting client's hold on the limits; release gives it
// back.
type waitSlot struct {
	client string
	gauge  prometheus.Gauge
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
	if n := waiters.total.Add(1); n > int64(limits.maxWaiting) {
		waiters.total.Add(-1)
		return nil, tooMany(fmt.Sprintf("this gateway has its max_waiting (%d) clients waiting on topics", limits.maxWaiting))
	}
	slot := &waitSlot{gauge: metrics.waiting.WithLabelValues(kind)}
	if limits.maxPerClient > 0 {
		slot.client, _ = caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
		waiters.mu.Lock()
		if waiters.byClient == nil {
			waiters.byClient = map[string]int{}
		}
		if waiters.byClient[slot.client] >= limits.maxPerClient {
			waiters.mu.Unlock()
			waiters.total.Add(-1)
			return nil, tooMany(fmt.Sprintf("client %s has its max_waiting_per_client (%d) requests waiting on topics", slot.client, limits.maxPerClient))
		}
		waiters.byClient[slot.client]++
		waiters.mu.Unlock()
	}
	slot.gauge.Inc()
	return slot, nil
}

// release gives the slot's places back.
func (s *waitSlot) release() {
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
// poll forwarded as it is (the hub off); release gives it back.
func openSubscription(rg *region) (release func(), rf *refusal) {
	if n := rg.state.subscriptions.Add(1); n > int64(rg.maxSubscriptions) {
		rg.state.subscriptions.Add(-1)
		return nil, tooManySubscriptions(rg)
	}
	return func() { rg.state.subscriptions.Add(-1) }, nil
}

func tooManySubscriptions(rg *region) *refusal {
	return tooMany(fmt.Sprintf("region %s has its max_subscriptions (%d) subscriptions open", rg.name, rg.maxSubscriptions))
}

func tooMany(msg string) *refusal {
	return &refusal{status: http.StatusTooManyRequests, msg: msg + "; retry in 1 s", retryAfter: waitRetryAfter}
}
