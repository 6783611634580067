package momentolocal

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"
)

// This file makes the backend play a real Momento region when asked to:
// a latency added to every answer, and Momento's account limits answered
// 429 as Momento answers them. All of it is off by default.

// rateLimit admits at most perSecond operations a second: a token bucket
// that holds perSecond tokens (a burst of up to one second's worth) and
// refills continuously, one token every 1/perSecond s. It is written as
// the generic cell rate algorithm: one atomic time, tat, the moment the
// bucket would be full again, advanced by one interval per operation, so
// admitting costs a load and a compare-and-swap and no lock or goroutine.
//
// A token bucket rather than a fixed one-second window: both admit
// perSecond a second over time, but a window admits a whole second's
// worth again at each boundary (2 x perSecond within a few milliseconds
// across it) and then refuses everything until the next, while the bucket
// spreads what it admits after a burst evenly, one every interval, which
// is what a benchmark pacing a gateway against "100 operations a second"
// expects to see.
type rateLimit struct {
	params atomic.Pointer[rateParams] // nil: no limit
	tat    atomic.Int64               // Unix nanoseconds
}

type rateParams struct {
	perSecond int
	interval  int64 // nanoseconds per token, rounded up: never more than perSecond a second
	burst     int64 // perSecond tokens, in nanoseconds: how far tat may run ahead of now
}

// set changes the rate; 0 removes the limit. The bucket's level carries
// over.
func (l *rateLimit) set(perSecond int) {
	if perSecond <= 0 {
		l.params.Store(nil)
		return
	}
	interval := (int64(time.Second) + int64(perSecond) - 1) / int64(perSecond)
	l.params.Store(&rateParams{perSecond: perSecond, interval: interval, burst: int64(perSecond) * interval})
}

// allow takes a token at now (Unix nanoseconds), or reports that the
// bucket is empty and, with the limit in force, how many operations a
// second it allows.
func (l *rateLimit) allow(now int64) (ok bool, perSecond int) {
	p := l.params.Load()
	if p == nil {
		return true, 0
	}
	for {
		tat := l.tat.Load()
		next := max(tat, now) + p.interval
		if next-now > p.burst {
			return false, p.perSecond
		}
		if l.tat.CompareAndSwap(tat, next) {
			return true, p.perSecond
		}
	}
}

// concurrencyLimit counts requests in progress and admits at most max of
// them at once; max 0 admits every request and only counts.
type concurrencyLimit struct {
	max atomic.Int64
	n   atomic.Int64
}

// acquire takes a place, or reports that all max are taken.
func (c *concurrencyLimit) acquire() (ok bool, limit int64) {
	for {
		n, limit := c.n.Load(), c.max.Load()
		if limit > 0 && n >= limit {
			return false, limit
		}
		if c.n.CompareAndSwap(n, n+1) {
			return true, limit
		}
	}
}

func (c *concurrencyLimit) release() { c.n.Add(-1) }

// limits are a backend's simulated account limits. They live in its state,
// so that a reload neither refills a bucket nor forgets the subscriptions
// still open through the old config.
type limits struct {
	ops           rateLimit                      // max_ops_per_second: cache gets, sets and deletes
	publishes     rateLimit                      // max_publishes_per_second
	subscriptions concurrencyLimit               // max_subscriptions
	throttled     [len(limitNames)]atomic.Uint64 // answers 429, by limit
}

// The limits, as indexes of limits.throttled and as named in the 429
// answers and the metrics.
const (
	limitOps = iota
	limitPublishes
	limitSubscriptions
)

var limitNames = [...]string{
	limitOps:           "max_ops_per_second",
	limitPublishes:     "max_publishes_per_second",
	limitSubscriptions: "max_subscriptions",
}

// set puts a handler's limits in force.
func (l *limits) set(h *Handler) {
	l.ops.set(h.MaxOpsPerSecond)
	l.publishes.set(h.MaxPublishesPerSecond)
	l.subscriptions.max.Store(int64(h.MaxSubscriptions))
}

// takeOp admits a cache operation or a publish (which), or answers 429
// and returns false. Like Momento, which documents no Retry-After on its
// 429s, it sends none: the backend stands in for Momento so that a
// gateway's tests exercise the answer Momento really gives. The body
// names the limit for the person reading it.
func (h *Handler) takeOp(w http.ResponseWriter, which int) bool {
	rl := &h.state.limits.ops
	what := "cache operations"
	if which == limitPublishes {
		rl, what = &h.state.limits.publishes, "publishes"
	}
	ok, perSecond := rl.allow(h.state.store.now().UnixNano())
	if !ok {
		h.state.limits.throttled[which].Add(1)
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf(
			"too many requests: momento_local %q allows %d %s a second (%s)", h.Name, perSecond, what, limitNames[which]))
	}
	return ok
}

// takeSubscription admits a subscribe, or answers 429 and returns false.
// An admitted subscribe holds its place until it is answered: the caller
// must call h.state.limits.subscriptions.release then.
func (h *Handler) takeSubscription(w http.ResponseWriter) bool {
	ok, limit := h.state.limits.subscriptions.acquire()
	if !ok {
		h.state.limits.throttled[limitSubscriptions].Add(1)
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf(
			"too many subscriptions: momento_local %q allows %d at once (%s)", h.Name, limit, limitNames[limitSubscriptions]))
	}
	return ok
}

// lateWriter holds an answer back by a latency, from when the answer is
// ready to when its status line goes out, as a region that far away would
// deliver it: a get answers that much later, and a subscriber receives a
// message that long after it was published. The client leaving ends the
// wait.
type lateWriter struct {
	http.ResponseWriter
	ctx    context.Context
	delay  time.Duration
	waited bool
}

func (w *lateWriter) wait() {
	if w.waited {
		return
	}
	w.waited = true
	t := time.NewTimer(w.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-w.ctx.Done():
	}
}

// WriteHeader implements http.ResponseWriter.
func (w *lateWriter) WriteHeader(status int) {
	w.wait()
	w.ResponseWriter.WriteHeader(status)
}

// Write implements http.ResponseWriter.
func (w *lateWriter) Write(p []byte) (int, error) {
	w.wait()
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (w *lateWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
