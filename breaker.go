package momento

import (
	"cmp"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

// BreakerConfig sets when a region's circuit breaker opens and how it
// recovers. Failures are transport errors, upstream timeouts and 5xx
// answers; every other answer (4xx and 429 included) is a success, and a
// request the client abandons, or one refused for its size, counts as
// neither.
type BreakerConfig struct {
	// Consecutive failures that open the breaker. Default: 5.
	Failures uint32 `json:"failures,omitempty"`

	// Also open when failures/requests in the current window reaches this
	// ratio (0 < ratio <= 1), once at least min_requests were seen. Default:
	// off (0).
	FailureRatio float64 `json:"failure_ratio,omitempty"`

	// Requests that must be seen in the window before failure_ratio applies.
	// Both count only requests the region decided (not those excluded as
	// the client's doing, nor those in flight). Default: 20.
	MinRequests uint32 `json:"min_requests,omitempty"`

	// The counting window while closed: counts reset every window. Default: 60s.
	Window caddy.Duration `json:"window,omitempty"`

	// How long the breaker stays open before it lets probes through
	// (half-open). Clients get 503 with Retry-After meanwhile. Default: 30s.
	OpenFor caddy.Duration `json:"open_for,omitempty"`

	// Probe requests allowed while half-open; that many successes in a row
	// close the breaker, one failure opens it again. Default: 1.
	HalfOpenRequests uint32 `json:"half_open_requests,omitempty"`

	// While half-open, how long an upload may take to arrive whole before
	// it may probe (see probeUploadWait); one that takes longer is refused
	// with 503 and Retry-After. Default: 1s.
	ProbeUploadWait caddy.Duration `json:"probe_upload_wait,omitempty"`
}

// Breaker defaults, as documented on BreakerConfig.
const (
	defaultFailures         = 5
	defaultMinRequests      = 20
	defaultWindow           = 60 * time.Second
	defaultOpenFor          = 30 * time.Second
	defaultHalfOpenRequests = 1
	defaultProbeUploadWait  = time.Second
)

// withDefaults returns a copy of c (which may be nil) with unset fields at
// their defaults.
func (c *BreakerConfig) withDefaults() BreakerConfig {
	var out BreakerConfig
	if c != nil {
		out = *c
	}
	out.Failures = cmp.Or(out.Failures, defaultFailures)
	out.MinRequests = cmp.Or(out.MinRequests, defaultMinRequests)
	out.Window = cmp.Or(out.Window, caddy.Duration(defaultWindow))
	out.OpenFor = cmp.Or(out.OpenFor, caddy.Duration(defaultOpenFor))
	out.HalfOpenRequests = cmp.Or(out.HalfOpenRequests, defaultHalfOpenRequests)
	out.ProbeUploadWait = cmp.Or(out.ProbeUploadWait, caddy.Duration(defaultProbeUploadWait))
	return out
}

// validate reports the first setting that is out of range, naming it as
// the config does under prefix (e.g. "breaker").
func (c *BreakerConfig) validate(prefix string) error {
	if c == nil {
		return nil
	}
	switch {
	case math.IsNaN(c.FailureRatio) || c.FailureRatio < 0 || c.FailureRatio > 1:
		return fieldErrorf(prefix+".failure_ratio", "breaker failure_ratio %v must be between 0 and 1", c.FailureRatio)
	case c.Window < 0:
		return fieldErrorf(prefix+".window", "breaker window %s must be positive", time.Duration(c.Window))
	case c.OpenFor < 0:
		return fieldErrorf(prefix+".open_for", "breaker open_for %s must be positive", time.Duration(c.OpenFor))
	case c.ProbeUploadWait < 0:
		return fieldErrorf(prefix+".probe_upload_wait", "breaker probe_upload_wait %s must be positive", time.Duration(c.ProbeUploadWait))
	}
	return nil
}

// Outcomes reported to a breaker. errExcluded marks requests that say
// nothing about the region's health (client went away, value too large).
var (
	errUpstreamFailure = errors.New("upstream failure")
	errExcluded        = errors.New("not the region's fault")
	errForcedOpen      = errors.New("breaker forced open")
)

// breaker is one region's circuit breaker: a gobreaker two-step breaker
// (the request streams between Allow and done) plus what gobreaker does not
// expose: when it opened, so clients get an honest Retry-After. It lives in
// the region pool and survives config reloads.
type breaker struct {
	region string

	mu sync.Mutex // serializes replacing cb and settings
	// cb is read on every request without a lock; configure and reset
	// replace it whole.
	cb       atomic.Pointer[gobreaker.TwoStepCircuitBreaker[struct{}]]
	settings BreakerConfig

	// Read by gobreaker callbacks, which run under gobreaker's own lock.
	failures    atomic.Uint32
	minRequests atomic.Uint32
	ratioBits   atomic.Uint64
	forceOpen   atomic.Bool

	openedAt atomic.Int64 // unix nanos of the last transition to open
	// tripCounts are the counts that last opened the breaker, for the log:
	// gobreaker clears its counts on every state change.
	tripCounts atomic.Pointer[gobreaker.Counts]
	openFor    atomic.Int64 // nanoseconds
	// probeUploadWait is the settings' probe_upload_wait, in nanoseconds.
	probeUploadWait atomic.Int64

	logger atomic.Pointer[zap.Logger]
}

func newBreaker(region string, cfg BreakerConfig, logger *zap.Logger) *breaker {
	b := &breaker{region: region}
	b.logger.Store(logger)
	b.configure(cfg)
	return b
}

// configure applies new settings. Thresholds change in place; a change of
// window, open_for or half_open_requests needs a new gobreaker, and an
// open breaker is carried over as open so a reload never hides an outage.
func (b *breaker) configure(cfg BreakerConfig) {
	b.failures.Store(cfg.Failures)
	b.minRequests.Store(cfg.MinRequests)
	b.ratioBits.Store(math.Float64bits(cfg.FailureRatio))
	b.openFor.Store(int64(cfg.OpenFor))
	b.probeUploadWait.Store(int64(cfg.ProbeUploadWait))

	b.mu.Lock()
	defer b.mu.Unlock()
	old := b.cb.Load()
	if old != nil && b.settings.Window == cfg.Window && b.settings.OpenFor == cfg.OpenFor &&
		b.settings.HalfOpenRequests == cfg.HalfOpenRequests {
		b.settings = cfg
		return
	}
	b.settings = cfg
	b.cb.Store(b.newCircuitBreaker())
	if old != nil && old.State() != gobreaker.StateClosed {
		b.trip()
	}
}

// newCircuitBreaker builds a closed gobreaker with the current settings.
// Callers hold b.mu.
func (b *breaker) newCircuitBreaker() *gobreaker.TwoStepCircuitBreaker[struct{}] {
	return gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:          b.region,
		MaxRequests:   b.settings.HalfOpenRequests,
		Interval:      time.Duration(b.settings.Window),
		Timeout:       time.Duration(b.settings.OpenFor),
		ReadyToTrip:   b.readyToTrip,
		OnStateChange: b.onStateChange,
		IsExcluded:    func(err error) bool { return errors.Is(err, errExcluded) },
	})
}

// reset closes the breaker by hand (the admin API's reset), with fresh
// counts. It reports the state it left.
func (b *breaker) reset() gobreaker.State {
	b.mu.Lock()
	defer b.mu.Unlock()
	from := b.cb.Load().State()
	b.cb.Store(b.newCircuitBreaker())
	if from != gobreaker.StateClosed {
		b.onStateChange(b.region, from, gobreaker.StateClosed)
	}
	return from
}

// trip opens the breaker now, through gobreaker's own path: one forced
// failure that readyToTrip accepts.
func (b *breaker) trip() {
	b.forceOpen.Store(true)
	defer b.forceOpen.Store(false)
	if done, err := b.cb.Load().Allow(); err == nil {
		done(errForcedOpen)
	}
}

func (b *breaker) readyToTrip(c gobreaker.Counts) bool {
	ratio := math.Float64frombits(b.ratioBits.Load())
	// The ratio is of the requests the region decided: those excluded
	// (the client's doing) and those still in flight are neither, and
	// would let clients dilute it.
	decided := c.TotalSuccesses + c.TotalFailures
	trip := b.forceOpen.Load() || c.ConsecutiveFailures >= b.failures.Load() ||
		ratio > 0 && decided >= b.minRequests.Load() && float64(c.TotalFailures)/float64(decided) >= ratio
	if trip {
		b.tripCounts.Store(&c)
	}
	return trip
}

// onStateChange runs under gobreaker's lock: it must not call back into cb.
func (b *breaker) onStateChange(name string, from, to gobreaker.State) {
	fields := []zap.Field{zap.String("region", name), zap.String("from", from.String()), zap.String("to", to.String())}
	if to == gobreaker.StateOpen {
		b.openedAt.Store(time.Now().UnixNano())
		fields = append(fields, zap.Duration("open_for", time.Duration(b.openFor.Load())))
		if c := b.tripCounts.Load(); c != nil && from == gobreaker.StateClosed {
			fields = append(fields, zap.Uint32("requests", c.Requests), zap.Uint32("failures", c.TotalFailures),
				zap.Uint32("consecutive_failures", c.ConsecutiveFailures))
		}
	}
	metrics.transitions.WithLabelValues(name, to.String()).Inc()
	b.logger.Load().Warn("circuit breaker state changed", fields...)
}

// allow asks whether a request may go to the region. On refusal it returns
// how long until probing resumes.
func (b *breaker) allow() (done func(error), retryAfter time.Duration, ok bool) {
	done, err := b.cb.Load().Allow()
	if err != nil {
		return nil, b.retryAfter(time.Now()), false
	}
	return done, 0, true
}

// admitLongPoll lets a subscribe through unless the breaker is open. Long
// polls never hold a half-open probe slot (one could wait for minutes and
// starve the probes); they report their outcome through record instead.
func (b *breaker) admitLongPoll() (retryAfter time.Duration, ok bool) {
	if b.state() == gobreaker.StateOpen {
		return b.retryAfter(time.Now()), false
	}
	return 0, true
}

// record reports the outcome of a request that was admitted without a
// slot (a long poll), the moment it is known. Excluded outcomes say
// nothing and are not counted at all.
func (b *breaker) record(outcome error) {
	if errors.Is(outcome, errExcluded) {
		return
	}
	if done, err := b.cb.Load().Allow(); err == nil {
		done(outcome)
	}
}

// retryAfter is the time left until the open breaker lets probes through;
// while half-open (probes already in flight) it is a short, honest 1s.
func (b *breaker) retryAfter(now time.Time) time.Duration {
	left := time.Unix(0, b.openedAt.Load()).Add(time.Duration(b.openFor.Load())).Sub(now)
	if left < time.Second {
		return time.Second
	}
	return left
}

// state is the breaker's current state.
func (b *breaker) state() gobreaker.State { return b.cb.Load().State() }

// probing reports whether the breaker is half-open: the region takes only
// half_open_requests probes, whose outcome decides whether it closes.
func (b *breaker) probing() bool { return b.state() == gobreaker.StateHalfOpen }

// counts are the breaker's counts in the current window or state.
func (b *breaker) counts() gobreaker.Counts { return b.cb.Load().Counts() }
