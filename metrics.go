package momento

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
)

// The gateway's Prometheus metrics. They are created once, for the life of
// the process, and registered into each config's registry on Provision:
// Caddy makes a fresh registry per config, and collectors created anew
// would lose their counts on every reload.
//
// Label values come only from configuration (region names) and fixed sets
// (operations, status codes, breaker states), never from cache names or
// keys a client sends, so cardinality stays bounded.
var metrics = struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	rejections  *prometheus.CounterVec
	transitions *prometheus.CounterVec
	hubs        *prometheus.GaugeVec
	waiting     *prometheus.GaugeVec
}{
	requests: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "momento", Name: "requests_total",
		Help: "Requests to the Momento API by region, operation and the HTTP status the client got. Region is \"none\" for requests refused before routing.",
	}, []string{"region", "op", "code"}),
	duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "caddy", Subsystem: "momento", Name: "upstream_duration_seconds",
		Help:    "Time from sending a request to a region until its answer was streamed to the client.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"region", "op"}),
	rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "momento", Name: "breaker_rejections_total",
		Help: "Requests answered 503 because the region's breaker was open (or half-open with its probes in flight).",
	}, []string{"region"}),
	transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "momento", Name: "breaker_transitions_total",
		Help: "Circuit breaker state changes per region, by the state entered.",
	}, []string{"region", "to"}),
	hubs: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "momento", Name: "topic_hubs",
		Help: "Topic hubs per region: topics with one upstream subscription shared by their subscribers.",
	}, []string{"region"}),
	waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "caddy", Subsystem: "momento", Name: "topic_waiting_clients",
		Help: "Clients waiting on topics, by kind: long_poll or sse.",
	}, []string{"kind"}),
}

// registerMetrics adds the collectors to a config's registry, tolerating
// the ones already there, and the app's view of its regions' breakers.
func registerMetrics(reg prometheus.Registerer, app *App) error {
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metrics.requests, metrics.duration, regionGauges{app}, metrics.rejections, metrics.transitions,
		metrics.hubs, metrics.waiting} {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// statusCodes holds label values for the status codes, so the hot path
// does not format numbers.
var statusCodes = func() (m [600]string) {
	for i := range m {
		m[i] = strconv.Itoa(i)
	}
	return
}()

func codeLabel(status int) string {
	if status >= 0 && status < len(statusCodes) {
		return statusCodes[status]
	}
	return "other"
}

// noRegion labels requests refused before a region was chosen.
const noRegion = "none"

// stateValue maps breaker states to the gauge's documented values.
func stateValue(s gobreaker.State) float64 {
	switch s {
	case gobreaker.StateHalfOpen:
		return 1
	case gobreaker.StateOpen:
		return 2
	}
	return 0
}

// regionGauges reports, when scraped, the breaker state and the open
// upstream subscriptions of each region of a config. A gauge set on
// transitions would go stale: gobreaker moves from open to half-open
// lazily, on the next request.
type regionGauges struct{ app *App }

var (
	breakerStateDesc = prometheus.NewDesc(
		"caddy_momento_breaker_state",
		"Circuit breaker state per region: 0 closed, 1 half-open, 2 open.",
		[]string{"region"}, nil)
	subscriptionsDesc = prometheus.NewDesc(
		"caddy_momento_upstream_subscriptions",
		"Subscriptions (long polls) open to each region: one per topic hub, or one per waiting client with the hub off.",
		[]string{"region"}, nil)
	fannedOutDesc = prometheus.NewDesc(
		"caddy_momento_topic_messages_fanned_out_total",
		"Topic messages handed to subscribers by the hubs, per region (one message to N subscribers counts N).",
		[]string{"region"}, nil)
	readsDesc = prometheus.NewDesc(
		"caddy_momento_reads_total",
		"GETs by how they were served: hit (local cache, fresh), miss (an upstream call), coalesced (joined a call in flight), stale (local cache, the region failing).",
		[]string{"region", "served"}, nil)
	renewalsDesc = prometheus.NewDesc(
		"caddy_momento_local_cache_renewals_total",
		"Upstream calls that renewed a cached item nearing max_age ahead of its readers.",
		[]string{"region"}, nil)
	unsharedDesc = prometheus.NewDesc(
		"caddy_momento_reads_unshared_total",
		"GETs sent to the region by a call of their own, not shared, because the bounds on what shared calls hold were reached (counted as misses too).",
		[]string{"region"}, nil)
	heldBytesDesc = prometheus.NewDesc(
		"caddy_momento_shared_calls_held_bytes",
		"Bytes of answers the region's shared calls hold for their clients, and of large values still being sent after they left a local cache: within 64 MiB per region, but for such values past it while their clients are cut off.",
		[]string{"region"}, nil)
	cutOffDesc = prometheus.NewDesc(
		"caddy_momento_local_cache_cut_off_total",
		"Large values that left a local cache while clients were still being sent them, and that the 64 MiB bound could not take: those clients' answers were broken off.",
		[]string{"region"}, nil)
	evictionsDesc = prometheus.NewDesc(
		"caddy_momento_local_cache_evictions_total",
		"Entries the region's local read caches dropped for room.",
		[]string{"region"}, nil)
	cachedBytesDesc = prometheus.NewDesc(
		"caddy_momento_local_cache_bytes",
		"Bytes the region's local read caches hold (keys, values, overhead), within their max_size.",
		[]string{"region"}, nil)
	budgetDesc = prometheus.NewDesc(
		"caddy_momento_budget_per_second",
		"Calls a second the gateway sends the region, by kind (cache_operations, publishes): its configured max_ops_per_second or max_publishes_per_second, or the rate learned from its 429s; 0 while not metered.",
		[]string{"region", "kind"}, nil)
	budgetRefusedDesc = prometheus.NewDesc(
		"caddy_momento_budget_refused_total",
		"Client requests answered 429 because the region's budget of calls a second (shared among the clients calling) was spent, by kind.",
		[]string{"region", "kind"}, nil)
)

// Describe implements prometheus.Collector.
func (c regionGauges) Describe(ch chan<- *prometheus.Desc) {
	ch <- breakerStateDesc
	ch <- subscriptionsDesc
	ch <- fannedOutDesc
	ch <- readsDesc
	ch <- renewalsDesc
	ch <- unsharedDesc
	ch <- heldBytesDesc
	ch <- cutOffDesc
	ch <- evictionsDesc
	ch <- cachedBytesDesc
	ch <- budgetDesc
	ch <- budgetRefusedDesc
}

// Collect implements prometheus.Collector.
func (c regionGauges) Collect(ch chan<- prometheus.Metric) {
	for _, rg := range c.app.regions() {
		ch <- prometheus.MustNewConstMetric(breakerStateDesc, prometheus.GaugeValue, stateValue(rg.state.breaker.state()), rg.name)
		ch <- prometheus.MustNewConstMetric(subscriptionsDesc, prometheus.GaugeValue, float64(rg.state.subscriptions.Load()), rg.name)
		ch <- prometheus.MustNewConstMetric(fannedOutDesc, prometheus.CounterValue, float64(rg.state.fannedOut.Load()), rg.name)
		st := rg.state.reads.stats()
		for served, n := range map[string]int64{"hit": st.hits, "miss": st.misses, "coalesced": st.coalesced, "stale": st.stale} {
			ch <- prometheus.MustNewConstMetric(readsDesc, prometheus.CounterValue, float64(n), rg.name, served)
		}
		ch <- prometheus.MustNewConstMetric(renewalsDesc, prometheus.CounterValue, float64(st.renewals), rg.name)
		ch <- prometheus.MustNewConstMetric(unsharedDesc, prometheus.CounterValue, float64(st.unshared), rg.name)
		ch <- prometheus.MustNewConstMetric(heldBytesDesc, prometheus.GaugeValue, float64(st.held), rg.name)
		ch <- prometheus.MustNewConstMetric(cutOffDesc, prometheus.CounterValue, float64(st.cutOff), rg.name)
		ch <- prometheus.MustNewConstMetric(evictionsDesc, prometheus.CounterValue, float64(st.evictions), rg.name)
		ch <- prometheus.MustNewConstMetric(cachedBytesDesc, prometheus.GaugeValue, float64(st.bytes), rg.name)
		now := time.Now()
		for kind, bs := range map[string]BudgetStatus{
			"cache_operations": rg.state.ops.status(rg.maxOpsPerSecond, now),
			"publishes":        rg.state.publishes.status(rg.maxPublishesPerSecond, now),
		} {
			ch <- prometheus.MustNewConstMetric(budgetDesc, prometheus.GaugeValue, float64(bs.PerSecond), rg.name, kind)
			ch <- prometheus.MustNewConstMetric(budgetRefusedDesc, prometheus.CounterValue, float64(bs.Refused), rg.name, kind)
		}
	}
}

// regionMetrics holds one region's metric children, looked up once rather
// than by label values on every request.
type regionMetrics struct {
	name       string
	duration   [opCount]prometheus.Observer
	rejections prometheus.Counter
	hubs       prometheus.Gauge
	// requests[op][status] is filled on first use: most (op, status) pairs
	// never occur.
	requests [opCount][len(statusCodes)]atomic.Pointer[prometheus.Counter]
}

func newRegionMetrics(name string) *regionMetrics {
	m := &regionMetrics{name: name, rejections: metrics.rejections.WithLabelValues(name),
		hubs: metrics.hubs.WithLabelValues(name)}
	for o := op(0); o < opCount; o++ {
		m.duration[o] = metrics.duration.WithLabelValues(name, o.String())
	}
	return m
}

// countRequest counts one answer of the region's.
func (m *regionMetrics) countRequest(o op, status int) {
	if o >= opCount || status < 0 || status >= len(statusCodes) {
		metrics.requests.WithLabelValues(m.name, o.String(), codeLabel(status)).Inc()
		return
	}
	slot := &m.requests[o][status]
	c := slot.Load()
	if c == nil {
		counter := metrics.requests.WithLabelValues(m.name, o.String(), statusCodes[status])
		c = &counter
		slot.Store(c)
	}
	(*c).Inc()
}

// count counts one answered call, once.
func (c *call) count(status int) {
	switch {
	case c.region != nil:
		c.region.metrics.countRequest(c.op, status)
	case c.refusal != nil:
		metrics.requests.WithLabelValues(noRegion, "invalid", codeLabel(status)).Inc()
	default:
		metrics.requests.WithLabelValues(noRegion, c.op.String(), codeLabel(status)).Inc()
	}
}
