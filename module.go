// Package momento is a Caddy HTTP handler that fronts Momento's HTTP API
// (serverless cache and topics): it validates each request at the edge,
// routes it by cache name to the right regional endpoint, injects the
// server-held token, and proxies it through a per-region circuit breaker.
// Clients never hold the Momento token.
package momento

import (
	"cmp"
	"fmt"
	"net/http"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	// The embedded backend ships in the same binary, so `./caddy
	// list-modules` shows it and Caddyfile.example can run offline.
	_ "github.com/momento-gateway/caddy-momento/momentolocal"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler is the `momento` HTTP handler: a gateway to Momento's HTTP API.
//
// Requests to `GET|PUT|DELETE /cache/{cache}?key=…` and to
// `POST|GET /topics/{cache}/{topic}` are validated, routed to a region by
// cache name, and proxied with the region's token in the `authorization`
// header. Other paths go to the next handler.
//
// The handler sets these placeholders for the rest of Caddy (logs,
// headers, other handlers), looked up only when used:
//
//	Placeholder            | Description
//	-----------------------|------------------------------------------------
//	`{http.momento.region}`  | the region the request was routed to ("" if none)
//	`{http.momento.cache}`   | the cache name
//	`{http.momento.op}`      | get, set, delete, publish, subscribe, options or invalid
//	`{http.momento.breaker}` | the region's breaker state: "open" when it refused the request, else closed, half-open or open when asked
type Handler struct {
	// The regions this handler reaches, each with its token: definitions
	// (name, endpoint, token) or, by name alone, regions defined in the
	// global `momento` options. Default: every region of the global options.
	Regions []RegionConfig `json:"regions,omitempty"`

	// The region for caches that no route matches. Optional when there is
	// exactly one region (it is then the default); otherwise unrouted
	// caches get 404 Cache Not Found.
	DefaultRegion string `json:"default_region,omitempty"`

	// Routes from cache-name globs to regions; the first match wins.
	Routes []Route `json:"routes,omitempty"`

	// What to do with a client's own credential (a `token` query parameter
	// or an `Authorization` header): "strip" (default) drops it and sends the
	// region's token instead; "reject" answers 400.
	ClientToken string `json:"client_token,omitempty"`

	// Limit for one upstream exchange, from sending the request to the last
	// byte of the answer. Default: 10s. A region that does not answer in
	// time yields 504 and counts as a breaker failure.
	Timeout caddy.Duration `json:"timeout,omitempty"`

	// Largest item a set may store, in bytes of key plus value, as Momento
	// counts (the key as stored, key_prefix included). Default: 5 MiB
	// (Momento's item limit). A larger declared Content-Length is answered
	// 413 without contacting the region; a chunked body is cut off and the
	// upstream call aborted the moment it passes the limit, so nothing is
	// stored.
	MaxItemSize int64 `json:"max_item_size,omitempty"`

	// Longest key accepted, in bytes (decoded, before key_prefix). Default:
	// no limit beyond max_item_size, as at Momento (keys travel in the URL,
	// which Caddy limits with its max_header_size, 16 KiB by default).
	// Longer keys are answered 400 without contacting the region.
	MaxKeySize int64 `json:"max_key_size,omitempty"`

	// When the breakers of the regions this handler defines open and how
	// they recover (a region defined in the global options has its own).
	// A region is defined once per config: two handlers that define the
	// same region with different breaker settings are refused at load.
	Breaker *BreakerConfig `json:"breaker,omitempty"`

	// What this handler's clients may do: which caches, which operations,
	// how long a TTL. Default: everything the routes reach.
	Allow *AllowPolicy `json:"allow,omitempty"`

	// Prepended to every key before it goes upstream, invisible to clients.
	// Caddy placeholders are expanded per request, e.g.
	// "{http.auth.user.id}:" gives each signed-in user a private key space
	// behind basic_auth or any auth handler. Placeholder values are
	// query-escaped (all but letters, digits and -._~ are percent-encoded) so one user's id
	// cannot reach into another's namespace; a placeholder that is empty for
	// a request (no signed-in user) refuses the request with 403. For
	// key_base64 the prefix is added to the decoded bytes.
	KeyPrefix string `json:"key_prefix,omitempty"`

	// Prepended to every topic name before it goes upstream, with the same
	// placeholder rules as key_prefix: "{http.auth.user.id}-" gives each
	// signed-in user private topics. It must not contain '/'.
	TopicPrefix string `json:"topic_prefix,omitempty"`

	// Largest message a publish may carry, in bytes. Default: 4 KiB
	// (Momento's limit). Larger is 413 without contacting the region.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`

	// How long a subscribe (long poll) may wait for messages, separately
	// from timeout. Default: 5m. A poll that ends this way answers 200 with
	// no items, and the client polls again; it never counts against the
	// breaker.
	SubscribeTimeout caddy.Duration `json:"subscribe_timeout,omitempty"`

	// Cross-origin access for browser pages. Without it, no CORS headers are
	// sent.
	CORS *CORSConfig `json:"cors,omitempty"`

	// When set, every answer from a region carries this response header
	// naming the region that served it, e.g. "Momento-Region".
	RegionHeader string `json:"region_header,omitempty"`

	// Concurrent GETs of one item share one upstream call: "on" (default)
	// or "off". A GET never joins a call that began before a write of the
	// item through this gateway finished.
	Coalesce string `json:"coalesce,omitempty"`

	// A local cache of the region's answers to GETs, answering hot reads
	// without the region, and stale ones when it fails. Default: none.
	LocalCache *LocalCacheConfig `json:"local_cache,omitempty"`

	// appRegions names the regions of the global options, when known (the
	// Caddyfile adapter reads them from the options, Provision from the
	// app), so Validate can check references to them.
	appRegions []string

	policy           *compiledPolicy
	keyPrefix        *prefixTemplate
	topicPrefix      *prefixTemplate
	cors             *compiledCORS
	maxMessageSize   int64
	subscribeTimeout time.Duration

	app           *App
	regions       []*region
	routes        []compiledRoute
	defaultRegion *region
	// localCaches are the local_cache of each region, nil without one.
	localCaches  map[*regionState]*localCache
	rejectClient bool
	timeout      time.Duration
	maxItemSize  int64
	maxKeySize   int64
	logger       *zap.Logger
}

// Defaults, as documented on the fields.
const (
	defaultTimeout          = 10 * time.Second
	defaultMaxItemSize      = 5 << 20
	defaultMaxMessageSize   = 4 << 10
	defaultSubscribeTimeout = 5 * time.Minute
)

// Client token policies.
const (
	clientTokenStrip  = "strip"
	clientTokenReject = "reject"
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.momento",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision validates the config, sets defaults, and takes its regions
// from the momento app, which resolves tokens and endpoints and holds
// each region's breaker and connection pools across reloads.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	appVal, err := ctx.App("momento")
	if err != nil {
		return err
	}
	app := appVal.(*App)
	h.app = app
	h.appRegions = make([]string, 0, len(app.Regions))
	for _, rc := range app.Regions {
		h.appRegions = append(h.appRegions, rc.Name)
	}
	if err := h.Validate(); err != nil {
		return err
	}

	h.timeout = cmp.Or(time.Duration(h.Timeout), defaultTimeout)
	h.subscribeTimeout = cmp.Or(time.Duration(h.SubscribeTimeout), defaultSubscribeTimeout)
	h.maxItemSize = cmp.Or(h.MaxItemSize, defaultMaxItemSize)
	h.maxKeySize = h.MaxKeySize // 0: no limit but max_item_size's
	h.maxMessageSize = cmp.Or(h.MaxMessageSize, defaultMaxMessageSize)
	h.rejectClient = h.ClientToken == clientTokenReject
	h.policy = h.Allow.compile()
	h.cors = h.CORS.compile(h.policy, h.RegionHeader)
	h.keyPrefix = compilePrefix("key_prefix", h.KeyPrefix)
	h.topicPrefix = compilePrefix("topic_prefix", h.TopicPrefix)

	for _, rc := range h.Regions {
		var rg *region
		if rc.isReference() {
			rg, _ = app.lookup(rc.Name) // Validate checked it is defined
		} else {
			if rc.Breaker == nil {
				rc.Breaker = h.Breaker
			}
			if rg, err = app.define(rc); err != nil {
				return err
			}
		}
		h.regions = append(h.regions, rg)
	}
	if len(h.Regions) == 0 {
		h.regions = app.globalRegions()
	}
	byName := make(map[string]*region, len(h.regions))
	for _, rg := range h.regions {
		byName[rg.name] = rg
	}
	for _, rt := range h.Routes {
		h.routes = append(h.routes, compiledRoute{glob: rt.Cache, region: byName[rt.Region]})
	}
	switch {
	case h.DefaultRegion != "":
		h.defaultRegion = byName[h.DefaultRegion]
	case len(h.regions) == 1:
		h.defaultRegion = h.regions[0]
	}
	if h.LocalCache != nil {
		// Looked up once here, not on every read.
		h.localCaches = make(map[*regionState]*localCache, len(h.regions))
		for _, rg := range h.regions {
			h.localCaches[rg.state] = rg.state.reads.cacheFor(h.LocalCache)
		}
	}
	return nil
}

// Cleanup lets go of the handler's local caches (see regionReads.release).
func (h *Handler) Cleanup() error {
	for rs, lc := range h.localCaches {
		rs.reads.release(lc)
	}
	return nil
}

// ServeHTTP is the whole story of a request: parse it once, serve it,
// count it once.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	c, ours := parseCall(r)
	if !ours {
		return next.ServeHTTP(w, r)
	}
	c.setPlaceholders(r)
	status, cutOff := h.serve(w, r, c)
	c.count(status)
	if cutOff {
		// The answer broke off after the status was sent (the region broke
		// off, or the gateway could not keep a value for a slow client):
		// abort the connection so the client cannot take a truncated value
		// for a whole one.
		panic(http.ErrAbortHandler)
	}
	return nil
}

// serve answers the call: CORS and preflights first, then refusals at the
// edge, then the region. It returns the status the client got, and whether
// the answer was cut off midway.
//
// serve, subscribe and longPoll are the frames a waiting long poll sits
// in, so they are kept small: the edge, the subscriber's start and the
// answer's writing are in functions called and returned from before or
// after the wait. Under a plain site block, Caddy's handler chain is
// 5.5 KiB deep where it calls the gateway, and a waiting long poll then
// fits Go's 8 KiB starting stack instead of growing it to 16 KiB, which
// it would keep for as long as it waits (see BENCHMARKS.md, Topic fan-out).
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, c *call) (status int, cutOff bool) {
	if st, answered := h.atEdge(w, r, c); answered {
		return st, false
	}
	switch {
	case c.op == opGet && (h.LocalCache != nil || h.coalesce()):
		return h.read(w, r, c)
	case c.op == opSubscribe:
		return h.subscribe(w, r, c)
	}
	if rf := h.app.admitOp(r, c); rf != nil {
		return rf.write(w), false
	}
	return h.proxy(w, r, c)
}

// atEdge answers what the gateway answers without the region: CORS
// refusals, preflights, calls this handler refuses, and caches no region
// has. Otherwise it sets the call's region (and says so in region_header).
func (h *Handler) atEdge(w http.ResponseWriter, r *http.Request, c *call) (status int, answered bool) {
	if st := h.cors.apply(w, r, c); st != 0 {
		return st, true
	}
	if c.op == opOptions {
		return writePreflight(w, c), true
	}
	rf := c.refusal
	if rf == nil {
		rf = h.checkCall(c, r)
	}
	if rf != nil {
		if r.ProtoMajor == 1 && (r.ContentLength < 0 || r.ContentLength > unreadBodyToDrain) {
			// Refused with its upload unread: answer at once and close,
			// rather than let net/http read the body first (curl waits a
			// second for "100 Continue" before it sends more than 1 MiB).
			closeAfterAnswer(w)
		}
		return rf.write(w), true
	}
	if c.region = h.regionFor(c.cache); c.region == nil {
		// Momento's own answer for a cache it does not have.
		return refuse(http.StatusNotFound, "Cache Not Found").write(w), true
	}
	if h.RegionHeader != "" {
		w.Header().Set(h.RegionHeader, c.region.name)
	}
	return 0, false
}

// coalesce reports whether concurrent GETs of an item share a call.
func (h *Handler) coalesce() bool { return h.Coalesce != "off" }

// checkCall applies the handler's own rules to a well-formed call, and
// puts the key or topic prefix in place.
func (h *Handler) checkCall(c *call, r *http.Request) *refusal {
	if h.rejectClient && (c.hasTokenParam || c.hasAuthHeader && !authenticated(r)) {
		return refuse(http.StatusBadRequest, "this gateway does not accept client credentials: remove the token parameter and the Authorization header")
	}
	if rf := h.policy.check(c); rf != nil {
		return rf
	}
	if h.maxKeySize > 0 && int64(c.keySize) > h.maxKeySize {
		return refuse(http.StatusBadRequest, fmt.Sprintf("key of %d bytes exceeds max_key_size (%d bytes)", c.keySize, h.maxKeySize))
	}
	prefix := h.keyPrefix
	if c.api == apiTopics {
		prefix = h.topicPrefix
	}
	if rf := prefix.apply(c, r); rf != nil {
		return rf
	}
	switch c.op {
	case opSet:
		// Momento's item limit is on key plus value, the key as stored
		// (key_prefix included).
		if item := int64(len(c.key)) + max(c.bodySize, 0); item > h.maxItemSize {
			return refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
				"item of %d bytes (key %d + value %d) exceeds max_item_size (%d bytes, key plus value, as Momento counts)",
				item, len(c.key), max(c.bodySize, 0), h.maxItemSize))
		}
	case opPublish:
		if c.bodySize > h.maxMessageSize {
			return refuse(http.StatusRequestEntityTooLarge,
				fmt.Sprintf("message of %d bytes exceeds max_message_size (%d bytes)", c.bodySize, h.maxMessageSize))
		}
	}
	return nil
}

// authenticated reports whether an auth handler in front (basic_auth or a
// plugin) accepted the request: its Authorization header is then the
// user's sign-in, not a Momento token, and is never forwarded anyway.
func authenticated(r *http.Request) bool {
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		return false
	}
	id, _ := repl.GetString("http.auth.user.id")
	return id != ""
}

// setPlaceholders makes the call visible to the rest of Caddy as the
// {http.momento.*} placeholders documented on Handler. The values are
// looked up when used, so they reflect what the gateway decided, and cost
// nothing when no placeholder asks for them.
func (c *call) setPlaceholders(r *http.Request) {
	repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if !ok {
		return
	}
	repl.Map(func(key string) (any, bool) {
		switch key {
		case "http.momento.region":
			if c.region != nil {
				return c.region.name, true
			}
			return "", true
		case "http.momento.cache":
			return c.cache, true
		case "http.momento.op":
			return c.op.String(), true
		case "http.momento.breaker":
			switch {
			case c.breakerOpen:
				return "open", true
			case c.region != nil:
				return c.region.state.breaker.state().String(), true
			}
			return "", true
		}
		return nil, false
	})
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
