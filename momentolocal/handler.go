package momentolocal

import (
	"cmp"
	"crypto/subtle"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

const (
	// DefaultMaxItemSize is the item size limit when max_item_size is
	// unset: Momento's own limit of 5 MB for key plus value.
	DefaultMaxItemSize int64 = 5 << 20

	// DefaultMaxMemory is the memory bound when max_memory is unset.
	DefaultMaxMemory int64 = 256 << 20

	// DefaultMaxMessageSize is the topic message size limit when
	// max_message_size is unset: Momento's own limit of 4 KB.
	DefaultMaxMessageSize int64 = 4 << 10

	// DefaultTopicBuffer is how many messages each topic keeps when
	// topic_buffer is unset.
	DefaultTopicBuffer = 256

	// sweepInterval is how often expired items are swept out. Expiry is
	// also checked on every access, so this only bounds how long the
	// memory of unread expired items is held.
	sweepInterval = 10 * time.Second

	// maxTTLSeconds keeps ttl_seconds within a time.Duration.
	maxTTLSeconds = int64(1<<63-1) / int64(time.Second)

	cachePrefix  = "/cache/"
	topicsPrefix = "/topics/"
)

// Handler serves Momento's cache HTTP API (GET, PUT and DELETE on
// /cache/{cache}) and topics API (POST and GET on /topics/{cache}/{topic},
// described in the package documentation) from memory. Requests for other paths go to the next
// handler, so it composes with other handlers in a route. It must be
// started by Provision (in Caddy) or New (outside) before it serves.
type Handler struct {
	// The name the backend's data is kept under across config reloads.
	// A reload that keeps a momento_local of the same name keeps its
	// items, topics and waiting subscribers; one that drops the name
	// frees them. Handlers of one name share one backend, as when a site
	// listens on two addresses; give each backend that stands for a
	// region of its own (two regions, say) a name of its own. Default:
	// "default".
	Name string `json:"name,omitempty"`

	// The token every request must carry, either raw in the
	// `authorization` header or in the `token` query parameter. When
	// empty, any token or none is accepted. A request that carries both
	// the header and the parameter is rejected, as Momento does. The token
	// is never logged nor echoed in a response.
	Token string `json:"token,omitempty"`

	// The caches that exist. A request for any other cache is answered
	// 404 Cache Not Found. When empty, every cache exists.
	Caches []string `json:"caches,omitempty"`

	// The largest item accepted, in bytes of key plus value. A larger
	// PUT is answered 413 and nothing is stored. Default: 5 MiB.
	MaxItemSize int64 `json:"max_item_size,omitempty"`

	// The bound, in bytes, on the heap memory that cache items and topic
	// messages hold together: item keys and values, messages as the JSON
	// subscribers receive (binary ones base64-encoded), topic names, and
	// each one's bookkeeping, which was measured (about 200 bytes an item,
	// 80 a message, 220 a topic). The live heap they hold stays within
	// 85-100% of the bound for small items and within 1% for large ones;
	// the process's resident memory is more, by what Go's garbage
	// collector keeps between cycles (up to twice the live heap with
	// GOGC=100; GOMEMLIMIT caps it). When the bound is exceeded, whatever
	// is oldest goes first: the least recently used item or the earliest
	// published message still buffered, compared on one clock.
	// Default: 256 MiB.
	MaxMemory int64 `json:"max_memory,omitempty"`

	// The largest topic message accepted, in bytes of the request body. A
	// larger publish is answered 413 and nothing is published.
	// Default: 4 KiB, Momento's limit.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// How many of its latest messages each topic keeps for subscribers. A
	// subscriber asking for an older message gets a discontinuity and the
	// oldest one kept. Default: 256.
	TopicBuffer int `json:"topic_buffer,omitempty"`

	// The fields below make the backend behave like a real Momento region
	// under its account limits, for benchmarks and demos of a gateway in
	// front. Each is off when unset. Every limit counts across config
	// reloads (a reload neither refills it nor forgets open
	// subscriptions), and past it the backend answers 429 with a
	// plain-text body naming the limit, and no Retry-After, as Momento
	// documents none.

	// A delay added to every answer of the API, between the answer being
	// ready and its status line going out, as a region that many
	// milliseconds of round trip away: a get answers that much later, a
	// publish is acknowledged that much later (its subscribers see it at
	// once), and a waiting subscriber receives a message that long after
	// it was published.
	Latency caddy.Duration `json:"latency,omitempty"`

	// The cache operations (gets, sets and deletes) admitted a second:
	// Momento's default account limit is 100 a second per region. A token
	// bucket of that many tokens, refilled continuously: a burst of up to
	// a second's worth, then one every 1/N second. Only operations the
	// backend would perform count: requests answered 400, 401 or 404
	// Cache Not Found for their URL or token do not. The limit is checked
	// before a body is read, so a set refused for its body (413) has
	// taken its token, as the upload reached the region.
	MaxOpsPerSecond int `json:"max_ops_per_second,omitempty"`

	// The publishes admitted a second, counted as max_ops_per_second
	// counts cache operations. Momento limits topics apart from the cache
	// (10 operations a second per region by default). Subscribes are not
	// counted here: a long-polling subscriber asks again after every
	// message, so counting its polls would limit the message rate rather
	// than the clients; max_subscriptions bounds subscribers instead.
	MaxPublishesPerSecond int `json:"max_publishes_per_second,omitempty"`

	// The subscribe requests open at once: Momento's default account
	// limit is 100 concurrent subscriptions per region. A subscribe holds
	// its place from when it is admitted until it is answered, whether it
	// waited or not; one past the limit is answered 429 at once.
	MaxSubscriptions int `json:"max_subscriptions,omitempty"`

	state  *state // the backend's data, kept across reloads
	gen    uint64 // when the handler was started, see state.apply
	caches map[string]struct{}
	logger *zap.Logger

	// release is closed when the handler stops, to answer the subscribers
	// waiting through it; see Close. stopOnce is a pointer because New
	// takes its configuration as a Handler value.
	release  chan struct{}
	stopOnce *sync.Once
	pooled   bool // the state is in backends, not the handler's own

	hooks hooks
}

// hooks are the seams tests use to drive time and follow subscribers; all
// are nil in production.
type hooks struct {
	// now returns the current time; nil means time.Now.
	now func() time.Time
	// sweepTicks replaces the sweep ticker.
	sweepTicks <-chan time.Time
	// onWait is called each time a subscriber starts waiting for a
	// publish, with no lock held.
	onWait func()
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.momento_local",
		New: func() caddy.Module { return new(Handler) },
	}
}

// New returns a started handler for use outside Caddy, with cfg's
// configuration and defaults for what cfg leaves unset. Its data is its
// own, whatever its name, and Close frees it.
func New(cfg Handler) (*Handler, error) {
	h := &cfg
	h.logger = zap.NewNop()
	if err := h.prepare(); err != nil {
		return nil, err
	}
	h.state = newState(h)
	return h, nil
}

// Provision sets defaults and takes over the backend's state from the
// config being replaced, if it has one of the same name, or creates it.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.prepare(); err != nil {
		return err
	}
	val, loaded, err := backends.LoadOrNew(h.Name, func() (caddy.Destructor, error) {
		return newState(h), nil
	})
	if err != nil {
		return err
	}
	h.state, h.pooled = val.(*state), true
	if loaded {
		if err := h.state.take(h, ctx.Done()); err != nil {
			return err
		}
		h.logger.Info("momento_local keeps its data across the reload",
			zap.String("name", h.Name),
			zap.Int("items", h.state.store.len()),
			zap.Int("topics", h.state.topics.count()))
	} else {
		_ = h.state.take(h, ctx.Done())
	}
	return registerMetrics(ctx.GetMetricsRegistry())
}

// prepare is what New and Provision share: defaults, validation, and the
// handler's own bookkeeping.
func (h *Handler) prepare() error {
	h.Name = cmp.Or(h.Name, DefaultName)
	h.MaxItemSize = cmp.Or(h.MaxItemSize, DefaultMaxItemSize)
	h.MaxMemory = cmp.Or(h.MaxMemory, DefaultMaxMemory)
	h.MaxMessageSize = cmp.Or(h.MaxMessageSize, DefaultMaxMessageSize)
	h.TopicBuffer = cmp.Or(h.TopicBuffer, DefaultTopicBuffer)
	if err := h.Validate(); err != nil {
		return err
	}
	h.caches = nil // nil: every cache exists
	if len(h.Caches) > 0 {
		h.caches = make(map[string]struct{}, len(h.Caches))
		for _, name := range h.Caches {
			h.caches[name] = struct{}{}
		}
	}
	h.gen = generation.Add(1)
	h.release = make(chan struct{})
	h.stopOnce = new(sync.Once)
	h.logger.Debug("momento_local ready",
		zap.String("name", h.Name),
		zap.Bool("token_required", h.Token != ""),
		zap.Strings("caches", h.Caches),
		zap.Int64("max_item_size", h.MaxItemSize),
		zap.Int64("max_memory", h.MaxMemory),
		zap.Int64("max_message_size", h.MaxMessageSize),
		zap.Int("topic_buffer", h.TopicBuffer),
		zap.Duration("latency", time.Duration(h.Latency)),
		zap.Int("max_ops_per_second", h.MaxOpsPerSecond),
		zap.Int("max_publishes_per_second", h.MaxPublishesPerSecond),
		zap.Int("max_subscriptions", h.MaxSubscriptions))
	return nil
}

// Validate checks the configuration. Zero sizes stand for their defaults.
func (h *Handler) Validate() error {
	if h.MaxItemSize < 0 {
		return fmt.Errorf("max_item_size must be positive, got %d", h.MaxItemSize)
	}
	if h.MaxMemory < 0 {
		return fmt.Errorf("max_memory must be positive, got %d", h.MaxMemory)
	}
	if h.MaxMessageSize < 0 {
		return fmt.Errorf("max_message_size must be positive, got %d", h.MaxMessageSize)
	}
	if h.TopicBuffer < 0 {
		return fmt.Errorf("topic_buffer must be positive, got %d", h.TopicBuffer)
	}
	if h.Latency < 0 {
		return fmt.Errorf("latency must not be negative, got %v", time.Duration(h.Latency))
	}
	for _, limit := range []struct {
		name string
		n    int
	}{
		{"max_ops_per_second", h.MaxOpsPerSecond},
		{"max_publishes_per_second", h.MaxPublishesPerSecond},
		{"max_subscriptions", h.MaxSubscriptions},
	} {
		if limit.n < 0 {
			return fmt.Errorf("%s must be positive, or 0 (or unset) for no limit, got %d", limit.name, limit.n)
		}
	}
	itemSize, memory := cmp.Or(h.MaxItemSize, DefaultMaxItemSize), cmp.Or(h.MaxMemory, DefaultMaxMemory)
	// The largest item takes its size, rounded up to an allocation size
	// class (at most 1/8 more, or 8 KiB past 32 KiB), and the overhead.
	if need := itemSize + min(itemSize/8, 8<<10) + itemOverhead; memory < need {
		return fmt.Errorf("max_memory (%d bytes) must exceed max_item_size (%d bytes) by at least %d bytes of per-item overhead and allocation rounding, or the largest item could never be kept; raise max_memory or lower max_item_size",
			memory, itemSize, need-itemSize)
	}
	for _, name := range h.Caches {
		if problem := checkCacheName(name); problem != "" {
			return fmt.Errorf("caches: %q is not a valid cache name: %s", name, problem)
		}
	}
	return nil
}

// Cleanup is Close, when Caddy unloads the handler's config.
func (h *Handler) Cleanup() error {
	return h.Close()
}

// Close stops the handler. Subscribers waiting through it are answered an
// empty page (200, no items), as is a subscribe through it that would
// wait from then on: they poll again and reach the config in force, which
// finds the same messages when it keeps the backend. Keeping them waiting
// instead would keep the old config's server, which Caddy shuts down
// gracefully, alive until the next publish (with no grace_period, for
// ever) and, with a grace_period, cut them off with an error a gateway
// would count against its region.
//
// The backend's data is freed when no config uses its name any more, and
// at once for a handler from New. Otherwise the handler keeps answering
// requests. It is safe to call more than once.
func (h *Handler) Close() error {
	if h.stopOnce == nil {
		return nil // never started
	}
	h.stopOnce.Do(func() {
		close(h.release)
		switch {
		case h.pooled:
			_, _ = backends.Delete(h.Name)
		case h.state != nil:
			_ = h.state.Destruct()
		}
	})
	return nil
}

// Len returns the number of items stored, including expired items not yet
// swept.
func (h *Handler) Len() int {
	if h.state == nil {
		return 0
	}
	return h.state.store.len()
}

// Bytes returns the key and value bytes stored, including those of expired
// items not yet swept. The per-item overhead counted against max_memory is
// not included, nor are topic messages.
func (h *Handler) Bytes() int64 {
	if h.state == nil {
		return 0
	}
	return h.state.store.size()
}

// ServeHTTP answers Momento API requests and passes any other request to
// next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.serve(w, r) {
		return nil
	}
	return next.ServeHTTP(w, r)
}

// HTTPHandler returns the handler as a plain http.Handler for use outside
// Caddy, answering 404 for paths outside Momento's API.
func (h *Handler) HTTPHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !h.serve(w, r) {
			writeError(w, http.StatusNotFound, "Not Found")
		}
	})
}

// serve answers r if its path belongs to Momento's API and reports whether
// it did.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	if h.state.applied.Load() < h.gen {
		h.state.apply(h) // the first request of a reloaded config
	}
	var serve func(http.ResponseWriter, *http.Request, string)
	switch {
	case strings.HasPrefix(path, cachePrefix):
		serve, path = h.serveCache, path[len(cachePrefix):]
	case strings.HasPrefix(path, topicsPrefix):
		serve, path = h.serveTopic, path[len(topicsPrefix):]
	default:
		return false
	}
	if h.Latency > 0 {
		w = &lateWriter{ResponseWriter: w, ctx: r.Context(), delay: time.Duration(h.Latency)}
	}
	serve(w, r, path)
	return true
}

// cacheExists answers 404 Cache Not Found, as Momento does, for a cache
// outside the configured list.
func (h *Handler) cacheExists(w http.ResponseWriter, cache string) bool {
	if h.caches != nil {
		if _, ok := h.caches[cache]; !ok {
			writeError(w, http.StatusNotFound, "Cache Not Found")
			return false
		}
	}
	return true
}

// admit parses the query and checks the token, the start of every API
// request; on a problem it answers and returns false.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request) (query, bool) {
	q, problem := parseQuery(r.URL.RawQuery)
	if problem != "" {
		writeError(w, http.StatusBadRequest, problem)
		return q, false
	}
	if status, problem := h.authorize(r, &q); status != 0 {
		writeError(w, status, problem)
		return q, false
	}
	return q, true
}

// authorize checks the request's token against the configured one and
// returns the status and message to answer with when it fails, or 0.
// Messages never contain a token.
func (h *Handler) authorize(r *http.Request, q *query) (int, string) {
	header, inHeader := r.Header["Authorization"]
	if inHeader && q.hasToken {
		return http.StatusBadRequest, "give the token in the authorization header or in the token query parameter, not both"
	}
	if h.Token == "" {
		return 0, ""
	}
	var given string
	switch {
	case inHeader:
		given = header[0]
	case q.hasToken:
		given = q.token
	default:
		return http.StatusUnauthorized, "missing token: give it in the authorization header or the token query parameter"
	}
	if subtle.ConstantTimeCompare([]byte(given), []byte(h.Token)) != 1 {
		return http.StatusUnauthorized, "invalid token"
	}
	return 0, ""
}

// writeError answers with a plain-text message, as Momento does.
func writeError(w http.ResponseWriter, status int, message string) {
	vals := []string{"text/plain; charset=utf-8", "nosniff"}
	hdr := w.Header()
	hdr["Content-Type"] = vals[0:1:1]
	hdr["X-Content-Type-Options"] = vals[1:2:2]
	w.WriteHeader(status)
	_, _ = io.WriteString(w, message)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
