package momento

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the admin API module `admin.api.momento`. On Caddy's admin
// endpoint it serves:
//
//	GET  /momento/regions                          every region's endpoint, breaker, topics and reads
//	POST /momento/regions/<name>/reset             close a region's breaker by hand
//	POST /momento/regions/<name>/purge[?cache=<c>] empty its local read caches (or one cache's entries)
//
// It reads the regions of the running config from the momento app, whose
// breakers survive config reloads. Tokens are shown as their kind and
// fingerprint only.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.momento",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{
		{Pattern: "/momento/regions", Handler: caddy.AdminHandlerFunc(listRegions)},
		{Pattern: "/momento/regions/", Handler: caddy.AdminHandlerFunc(regionAction)},
	}
}

// RegionStatus is one region as GET /momento/regions shows it.
type RegionStatus struct {
	// The region's configured name.
	Name string `json:"name"`
	// The HTTP endpoint requests go to.
	Endpoint string `json:"endpoint"`
	// Breaker state: closed, half-open or open.
	State string `json:"state"`
	// Counts in the breaker's current window (closed) or state.
	Counts BreakerCounts `json:"counts"`
	// Whole seconds until an open breaker lets probes through.
	RetryAfterSeconds int64 `json:"retry_after_seconds,omitempty"`
	// The token's format: v1, legacy, v2 or opaque.
	TokenKind TokenKind `json:"token_kind"`
	// First 8 hex digits of the token's SHA-256: tells tokens apart without
	// revealing them.
	TokenFingerprint string `json:"token_fingerprint"`
	// Topics with a hub: one upstream subscription shared by their
	// subscribers.
	TopicHubs int `json:"topic_hubs"`
	// Subscriptions (long polls) open to the region: the hubs', and with the
	// hub off, the clients' own.
	Subscriptions int64 `json:"subscriptions"`
	// Clients waiting on the region's topic hubs now.
	TopicWaiters int `json:"topic_waiters"`
	// How GETs were served since the process started.
	Reads ReadCounts `json:"reads"`
	// The cache operations and publishes a second the gateway sends the
	// region, and the clients it refused for them.
	CacheOperations BudgetStatus `json:"cache_operations"`
	Publishes       BudgetStatus `json:"publishes"`
}

// ReadCounts say how a region's GETs were served.
type ReadCounts struct {
	// Answered from a local cache, fresh.
	Hits int64 `json:"hits"`
	// Sent to the region (each one an upstream call).
	Misses int64 `json:"misses"`
	// Joined a call already in flight for the same item.
	Coalesced int64 `json:"coalesced"`
	// Answered from a local cache, stale, because the region failed.
	Stale int64 `json:"stale"`
	// Calls made ahead of time to renew a cached item nearing max_age, so
	// that its readers do not wait for it (each one an upstream call).
	Renewals int64 `json:"renewals"`
	// Upstream calls saved: hits and coalesced reads, less the renewals.
	Saved int64 `json:"upstream_calls_saved"`
	// Misses answered by a call of their own, not shared, because the
	// bounds on what shared calls hold were reached (in misses too).
	Unshared int64 `json:"unshared"`
	// Bytes of answers the region's shared calls hold, and of large values
	// still being sent to clients after they left a local cache: within
	// 64 MiB, but for such values past it while their clients are cut off.
	HeldBytes int64 `json:"held_bytes"`
	// Large values that left a local cache while clients were still being
	// sent them, past the 64 MiB: those clients' answers were broken off
	// (they read again).
	CutOff int64 `json:"cut_off_values"`
	// Entries the local caches dropped for room.
	Evictions int64 `json:"evictions"`
	// Bytes the local caches hold (keys, values, overhead).
	CachedBytes int64 `json:"cached_bytes"`
}

// BreakerCounts are a breaker's counts.
type BreakerCounts struct {
	// Requests let through.
	Requests uint32 `json:"requests"`
	// Of those, successes and failures (requests that count as neither,
	// such as abandoned ones, are in neither).
	Successes uint32 `json:"successes"`
	Failures  uint32 `json:"failures"`
	// Failures in a row, as the failures setting counts them.
	ConsecutiveFailures uint32 `json:"consecutive_failures"`
}

func statusOf(rg *region) RegionStatus {
	b := rg.state.breaker
	st := b.state()
	c := b.counts()
	rs := RegionStatus{
		Name:     rg.name,
		Endpoint: rg.endpoint,
		State:    st.String(),
		Counts: BreakerCounts{Requests: c.Requests, Successes: c.TotalSuccesses,
			Failures: c.TotalFailures, ConsecutiveFailures: c.ConsecutiveFailures},
		TokenKind:        rg.token.Kind(),
		TokenFingerprint: rg.token.Fingerprint(),
		Subscriptions:    rg.state.subscriptions.Load(),
	}
	rs.TopicHubs, rs.TopicWaiters = rg.state.hubs.counts()
	rd := rg.state.reads.stats()
	rs.Reads = ReadCounts{Hits: rd.hits, Misses: rd.misses, Coalesced: rd.coalesced, Stale: rd.stale, Renewals: rd.renewals,
		Saved: rd.hits + rd.coalesced - rd.renewals, Unshared: rd.unshared, HeldBytes: rd.held, CutOff: rd.cutOff, Evictions: rd.evictions, CachedBytes: rd.bytes}
	rs.CacheOperations = rg.state.ops.status(rg.maxOpsPerSecond, time.Now())
	rs.Publishes = rg.state.publishes.status(rg.maxPublishesPerSecond, time.Now())
	if st == gobreaker.StateOpen {
		rs.RetryAfterSeconds = retryAfterSeconds(b.retryAfter(time.Now()))
	}
	return rs
}

// runningRegions are the regions of the running config, sorted by name.
func runningRegions() []*region {
	app, ok := activeApp()
	if !ok {
		return nil
	}
	return app.regions()
}

func listRegions(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("use GET")}
	}
	out := []RegionStatus{}
	for _, rg := range runningRegions() {
		out = append(out, statusOf(rg))
	}
	return writeJSON(w, out)
}

// regionAction serves POST /momento/regions/<name>/reset (close the
// breaker) and POST /momento/regions/<name>/purge[?cache=<cache>] (empty
// the local read caches, or one Momento cache's entries in them).
func regionAction(w http.ResponseWriter, r *http.Request) error {
	name, action, ok := strings.Cut(strings.TrimPrefix(r.URL.Path, "/momento/regions/"), "/")
	if !ok || (action != "reset" && action != "purge") || name == "" {
		return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("unknown path: use POST /momento/regions/<name>/reset or /purge")}
	}
	if r.Method != http.MethodPost {
		return caddy.APIError{HTTPStatus: http.StatusMethodNotAllowed, Err: fmt.Errorf("use POST to %s", action)}
	}
	for _, rg := range runningRegions() {
		if rg.name != name {
			continue
		}
		if action == "purge" {
			cache := r.URL.Query().Get("cache")
			n := rg.state.reads.purge(cache)
			rg.state.breaker.logger.Load().Info("local read caches purged through the admin API",
				zap.String("region", name), zap.String("cache", cache), zap.Int("entries", n))
			return writeJSON(w, map[string]int{"purged": n})
		}
		b := rg.state.breaker
		from := b.reset()
		b.logger.Load().Info("circuit breaker reset through the admin API",
			zap.String("region", name), zap.String("was", from.String()))
		return writeJSON(w, statusOf(rg))
	}
	return caddy.APIError{HTTPStatus: http.StatusNotFound, Err: fmt.Errorf("region %q is not configured", name)}
}

func writeJSON(w http.ResponseWriter, v any) error {
	w.Header().Set("Content-Type", "application/json")
	return json.NewEncoder(w).Encode(v)
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)
