package momento

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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
	region *regionState
}

// admitWaiter takes a place for a client that is about to wait on a topic
// of rg (a long poll), or refuses it with 429, naming the limit, before
// anything is sent to the region.
func (a *App) admitWaiter(r *http.Request, rg *region) (*waitSlot, *refusal) {
	limits := a.limits()
	if n := waiters.total.Add(1); n > int64(limits.maxWaiting) {
		waiters.total.Add(-1)
		return nil, tooMany(fmt.Sprintf("this gateway has its max_waiting (%d) clients waiting on topics", limits.maxWaiting))
	}
	slot := &waitSlot{}
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
	if n := rg.state.subscriptions.Add(1); n > int64(rg.maxSubscriptions) {
		rg.state.subscriptions.Add(-1)
		slot.release()
		return nil, tooMany(fmt.Sprintf("region %s has its max_subscriptions (%d) subscriptions open", rg.name, rg.maxSubscriptions))
	}
	slot.region = rg.state
	return slot, nil
}

// release gives the slot's places back.
func (s *waitSlot) release() {
	if s.region != nil {
		s.region.subscriptions.Add(-1)
	}
	if s.client != "" {
		waiters.mu.Lock()
		if waiters.byClient[s.client]--; waiters.byClient[s.client] <= 0 {
			delete(waiters.byClient, s.client)
		}
		waiters.mu.Unlock()
	}
	waiters.total.Add(-1)
}

func tooMany(msg string) *refusal {
	return &refusal{status: http.StatusTooManyRequests, msg: msg + "; retry in 1 s", retryAfter: waitRetryAfter}
}
