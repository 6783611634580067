// Package momento is a Caddy HTTP handler that fronts Momento's HTTP API
// (serverless cache): it validates each request at the edge, routes it by
// cache name to the right regional endpoint, injects the server-held token,
// and proxies it through a per-region circuit breaker. Clients never hold
// the Momento token.
package momento

import (
	"fmt"
	"io"
	"net/http"
	"strings"
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
type Handler struct {
	// The Momento regions (or other Momento-compatible endpoints) the
	// gateway can reach, each with its token.
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

	// Largest value accepted by a set, in bytes. Default: 5 MiB (Momento's
	// item limit). A larger declared Content-Length is answered 413 without
	// contacting the region; a chunked body is cut off and the upstream call
	// aborted the moment it passes the limit, so nothing is stored.
	MaxItemSize int64 `json:"max_item_size,omitempty"`

	// Longest key accepted, in bytes (decoded, before key_prefix). Default:
	// 4 KiB. Longer keys are answered 400 without contacting the region.
	MaxKeySize int64 `json:"max_key_size,omitempty"`

	// When region breakers open and how they recover. Breakers are per
	// region and shared by every handler that names the same region and
	// endpoint; the handler provisioned last sets their thresholds.
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

	policy           *compiledPolicy
	keyPrefix        *prefixTemplate
	topicPrefix      *prefixTemplate
	cors             *compiledCORS
	maxMessageSize   int64
	subscribeTimeout time.Duration

	regions       []*region
	routes        []compiledRoute
	defaultRegion *region
	rejectClient  bool
	timeout       time.Duration
	maxItemSize   int64
	maxKeySize    int64
	logger        *zap.Logger
}

// RegionConfig is one region the gateway can reach.
type RegionConfig struct {
	// The region's name: one of Momento's (us-east-1, eu-west-1, …), whose
	// endpoint is built in, or any name of your own with an endpoint.
	Name string `json:"name"`

	// The HTTP API endpoint, e.g. https://api.cache.cell-4-us-west-2-1.prod.a.momentohq.com.
	// Optional for Momento's own regions and for tokens that name their
	// endpoint (v1 and legacy keys). http:// is allowed for local backends.
	Endpoint string `json:"endpoint,omitempty"`

	// The Momento API key or token for this region. Use a placeholder such
	// as {env.MOMENTO_API_KEY} or {file./run/secrets/momento}: it is resolved
	// when the config loads, so the secret never appears in the config that
	// `caddy adapt` prints or the admin API serves.
	Token string `json:"token,omitempty"`

	// Where the region is defined, e.g. "Caddyfile:12". The Caddyfile
	// adapter sets it so that errors found only when the config loads (an
	// unset {env.*} token, a token for another region) name the line too.
	DefinedAt string `json:"defined_at,omitempty"`
}

type compiledRoute struct {
	glob   string
	region *region
}

// Defaults, as documented on the fields.
const (
	defaultTimeout          = 10 * time.Second
	defaultMaxItemSize      = 5 << 20
	defaultMaxKeySize       = 4 << 10
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

// Provision resolves tokens, derives endpoints, and attaches each region to
// its pooled breaker and connection pool (kept across config reloads).
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.checkStatic(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("momento: registering metrics: %w", err)
	}
	h.timeout = time.Duration(h.Timeout)
	if h.timeout == 0 {
		h.timeout = defaultTimeout
	}
	h.maxItemSize = h.MaxItemSize
	if h.maxItemSize == 0 {
		h.maxItemSize = defaultMaxItemSize
	}
	h.maxKeySize = h.MaxKeySize
	if h.maxKeySize == 0 {
		h.maxKeySize = defaultMaxKeySize
	}
	h.rejectClient = h.ClientToken == clientTokenReject
	breakerCfg := h.Breaker.withDefaults()
	var err error
	if h.policy, err = h.Allow.compile(); err != nil {
		return fmt.Errorf("momento: %w", err)
	}
	if h.cors, err = h.CORS.compile(h.policy, h.RegionHeader); err != nil {
		return fmt.Errorf("momento: %w", err)
	}
	h.keyPrefix = compilePrefix("key_prefix", h.KeyPrefix)
	h.topicPrefix = compilePrefix("topic_prefix", h.TopicPrefix)
	h.maxMessageSize = h.MaxMessageSize
	if h.maxMessageSize == 0 {
		h.maxMessageSize = defaultMaxMessageSize
	}
	h.subscribeTimeout = time.Duration(h.SubscribeTimeout)
	if h.subscribeTimeout == 0 {
		h.subscribeTimeout = defaultSubscribeTimeout
	}

	repl := caddy.NewReplacer()
	byName := make(map[string]*region, len(h.Regions))
	for _, rc := range h.Regions {
		rg, err := resolveRegion(rc, repl)
		if err != nil {
			if rc.DefinedAt != "" {
				return fmt.Errorf("momento: %w, at %s", err, rc.DefinedAt)
			}
			return fmt.Errorf("momento: %w", err)
		}
		if err := rg.attach(breakerCfg, h.logger); err != nil {
			return fmt.Errorf("momento: %w", err)
		}
		if !strings.Contains(rc.Token, "{") && rg.token.Kind() != TokenOpaque {
			h.logger.Warn("a Momento token is written into the config itself, so `caddy adapt` and the admin API show it: use token {env.MOMENTO_API_KEY} or {file./path} instead",
				zap.String("region", rg.name), zap.String("token_fingerprint", rg.token.Fingerprint()))
		}
		h.regions = append(h.regions, rg)
		byName[rg.name] = rg
		h.logger.Info("momento region",
			zap.String("region", rg.name),
			zap.String("endpoint", rg.endpoint),
			zap.String("token_kind", string(rg.token.Kind())),
			zap.String("token_fingerprint", rg.token.Fingerprint()))
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
	return nil
}

// checkStatic checks what can be checked without resolving placeholders.
// The Caddyfile parser runs the same checks, line by line, so most errors
// reach users with a file and line.
func (h *Handler) checkStatic() error {
	if len(h.Regions) == 0 {
		return fmt.Errorf("momento: no region configured: add a region block (e.g. region us-east-1 { token {env.MOMENTO_API_KEY} })")
	}
	names := make([]string, 0, len(h.Regions))
	for _, rc := range h.Regions {
		if rc.Name == "" {
			return fmt.Errorf("momento: a region has no name")
		}
		for _, n := range names {
			if n == rc.Name {
				return fmt.Errorf("momento: region %q is configured twice", rc.Name)
			}
		}
		names = append(names, rc.Name)
	}
	known := func(name string) bool {
		for _, n := range names {
			if n == name {
				return true
			}
		}
		return false
	}
	configured := strings.Join(names, ", ")
	for _, rt := range h.Routes {
		if msg := checkGlob(rt.Cache); msg != "" {
			return fmt.Errorf("momento: route: %s", msg)
		}
		if !known(rt.Region) {
			return fmt.Errorf("momento: route %q: region %q is not configured (configured: %s)", rt.Cache, rt.Region, configured)
		}
	}
	if h.DefaultRegion != "" && !known(h.DefaultRegion) {
		return fmt.Errorf("momento: default_region %q is not configured (configured: %s)", h.DefaultRegion, configured)
	}
	switch h.ClientToken {
	case "", clientTokenStrip, clientTokenReject:
	default:
		return fmt.Errorf("momento: client_token %q: use strip or reject", h.ClientToken)
	}
	if h.Timeout < 0 {
		return fmt.Errorf("momento: timeout %s must be positive", time.Duration(h.Timeout))
	}
	if h.MaxItemSize < 0 {
		return fmt.Errorf("momento: max_item_size %d must be positive", h.MaxItemSize)
	}
	if h.MaxKeySize < 0 {
		return fmt.Errorf("momento: max_key_size %d must be positive", h.MaxKeySize)
	}
	if h.MaxMessageSize < 0 {
		return fmt.Errorf("momento: max_message_size %d must be positive", h.MaxMessageSize)
	}
	if h.SubscribeTimeout < 0 {
		return fmt.Errorf("momento: subscribe_timeout %s must be positive", time.Duration(h.SubscribeTimeout))
	}
	if strings.Contains(h.TopicPrefix, "/") {
		return fmt.Errorf("momento: topic_prefix %q must not contain '/': topic names cannot", h.TopicPrefix)
	}
	if h.Breaker != nil {
		if err := h.Breaker.validate(); err != nil {
			return fmt.Errorf("momento: %w", err)
		}
	}
	return nil
}

// Cleanup releases this config's hold on the pooled regions; a region whose
// last holder goes away closes its idle connections.
func (h *Handler) Cleanup() error {
	for _, rg := range h.regions {
		rg.detach()
	}
	return nil
}

// ServeHTTP is the whole story of a request: parse it once, refuse it at
// the edge if it is wrong, pick its region, proxy it through the breaker.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	c, rf := parseCall(r)
	if c == nil && rf == nil {
		return next.ServeHTTP(w, r)
	}
	status := 0
	if c != nil {
		c.setPlaceholders(r)
	}
	defer func() {
		if status == 0 && c != nil {
			status = c.status // the handler aborted after answering
		}
		switch {
		case c != nil && c.region != nil:
			c.region.metrics.countRequest(c.op, status)
		case c != nil:
			metrics.requests.WithLabelValues(noRegion, c.op.String(), codeLabel(status)).Inc()
		default:
			metrics.requests.WithLabelValues(noRegion, "invalid", codeLabel(status)).Inc()
		}
	}()

	preflight := c != nil && c.op == opOptions
	if h.cors != nil {
		if status = h.cors.serve(w, r, preflight); status != 0 {
			return nil
		}
	}
	if preflight {
		allow := allowedCacheMethods
		if strings.HasPrefix(r.URL.Path, topicsPrefix) {
			allow = allowedTopicMethods
		}
		w.Header().Set("Allow", allow)
		w.WriteHeader(http.StatusNoContent)
		status = http.StatusNoContent
		return nil
	}
	if rf == nil {
		rf = h.checkCall(c, r)
	}
	if rf != nil {
		status = writeRefusal(w, rf)
		return nil
	}
	rg := h.regionFor(c.cache)
	if rg == nil {
		// Momento's own answer for a cache it does not have.
		status = writeRefusal(w, refuse(http.StatusNotFound, "Cache Not Found"))
		return nil
	}
	c.region = rg
	if h.RegionHeader != "" {
		w.Header().Set(h.RegionHeader, rg.name)
	}
	status = h.proxy(w, r, c, rg)
	return nil
}

// checkCall applies the handler's own rules to a well-formed call, and
// puts the key prefix in place.
func (h *Handler) checkCall(c *call, r *http.Request) *refusal {
	if h.rejectClient && (c.hasTokenParam || c.hasAuthHeader && !authenticated(r)) {
		return refuse(http.StatusBadRequest, "this gateway does not accept client credentials: remove the token parameter and the Authorization header")
	}
	if rf := h.policy.check(c); rf != nil {
		return rf
	}
	if int64(c.keySize) > h.maxKeySize {
		return refuse(http.StatusBadRequest, fmt.Sprintf("key of %d bytes exceeds max_key_size (%d bytes)", c.keySize, h.maxKeySize))
	}
	switch c.op {
	case opSet:
		if r.ContentLength > h.maxItemSize {
			return refuse(http.StatusRequestEntityTooLarge,
				fmt.Sprintf("value of %d bytes exceeds max_item_size (%d bytes)", r.ContentLength, h.maxItemSize))
		}
	case opPublish:
		if r.ContentLength > h.maxMessageSize {
			return refuse(http.StatusRequestEntityTooLarge,
				fmt.Sprintf("message of %d bytes exceeds max_message_size (%d bytes)", r.ContentLength, h.maxMessageSize))
		}
	}
	if c.topic != "" {
		return h.topicPrefix.applyTopic(c, r)
	}
	return h.keyPrefix.applyKey(c, r)
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

// writeRefusal answers the client in Momento's style: a status and a
// plain-text body. It writes the response itself rather than returning a
// caddyhttp.Error, because Caddy without handle_errors sends errors with an
// empty body, and API clients need the message.
func writeRefusal(w http.ResponseWriter, rf *refusal) int {
	hdr := w.Header()
	// Shared header values: refusals are a hot path when a breaker is
	// open, and Header.Set would allocate a slice for each.
	hdr["Content-Type"] = plainText
	hdr["X-Content-Type-Options"] = noSniff
	if rf.allow != "" {
		hdr.Set("Allow", rf.allow)
	}
	w.WriteHeader(rf.status)
	_, _ = io.WriteString(w, rf.msg)
	return rf.status
}

var (
	plainText = []string{"text/plain; charset=utf-8"}
	noSniff   = []string{"nosniff"}
)

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
