package momentolocal

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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

	// The bound, in bytes, on the memory that cache items and topic
	// messages use together: item keys and values, messages as the JSON
	// subscribers receive (binary ones base64-encoded), topic names, and a
	// small estimated overhead for each. When it is exceeded, whatever is
	// oldest goes first: the least recently used item or the earliest
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

	// Now returns the current time; nil means time.Now. Tests set it to
	// move time forward without sleeping. It is not configuration.
	Now func() time.Time `json:"-"`

	store   *store
	topics  *topics
	sweeper *sweeper
	caches  map[string]struct{}
	logger  *zap.Logger

	// sweepTicks replaces the sweep ticker in tests.
	sweepTicks <-chan time.Time

	// onWait, when set (by tests), is called each time a subscriber starts
	// waiting for a publish, with no lock held.
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
// configuration and defaults for what cfg leaves unset. Close stops it.
func New(cfg Handler) (*Handler, error) {
	h := cfg
	h.logger = zap.NewNop()
	if err := h.start(nil); err != nil {
		return nil, err
	}
	return &h, nil
}

// Provision sets defaults, creates the store and starts sweeping it.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if err := h.start(ctx.Done()); err != nil {
		return err
	}
	return registerMetrics(ctx.GetMetricsRegistry(), h)
}

// start is what New and Provision share. The sweeper stops on Close or
// when done is closed.
func (h *Handler) start(done <-chan struct{}) error {
	if h.MaxItemSize == 0 {
		h.MaxItemSize = DefaultMaxItemSize
	}
	if h.MaxMemory == 0 {
		h.MaxMemory = DefaultMaxMemory
	}
	if h.MaxMessageSize == 0 {
		h.MaxMessageSize = DefaultMaxMessageSize
	}
	if h.TopicBuffer == 0 {
		h.TopicBuffer = DefaultTopicBuffer
	}
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
	now := h.Now
	if now == nil {
		now = time.Now
	}
	h.store = newStore(h.MaxMemory, now)
	h.topics = newTopics(h.store, h.TopicBuffer, now, h.onWait)
	h.sweeper = startSweeper(h.store, sweepInterval, h.sweepTicks, done)

	h.logger.Debug("momento_local ready",
		zap.Bool("token_required", h.Token != ""),
		zap.Strings("caches", h.Caches),
		zap.Int64("max_item_size", h.MaxItemSize),
		zap.Int64("max_memory", h.MaxMemory),
		zap.Int64("max_message_size", h.MaxMessageSize),
		zap.Int("topic_buffer", h.TopicBuffer))
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
	itemSize, memory := h.MaxItemSize, h.MaxMemory
	if itemSize == 0 {
		itemSize = DefaultMaxItemSize
	}
	if memory == 0 {
		memory = DefaultMaxMemory
	}
	if memory < itemSize+itemOverhead {
		return fmt.Errorf("max_memory (%d bytes) must exceed max_item_size (%d bytes) by at least %d bytes of per-item overhead, or the largest item could never be kept; raise max_memory or lower max_item_size",
			memory, itemSize, itemOverhead)
	}
	for _, name := range h.Caches {
		if problem := checkCacheName(name); problem != "" {
			return fmt.Errorf("caches: %q is not a valid cache name: %s", name, problem)
		}
	}
	return nil
}

// Cleanup stops the sweeper and releases waiting subscribers when Caddy
// unloads the config, so that a reload does not wait for their long polls.
func (h *Handler) Cleanup() error {
	return h.Close()
}

// Close stops the background sweeper and answers every subscriber waiting
// on a topic with an empty page (200, no items), so clients poll again and
// reach the next config; a subscribe that would wait is answered so from
// then on. Otherwise the handler keeps answering
// requests; only expired items are no longer swept in the background.
// It is safe to call more than once.
func (h *Handler) Close() error {
	unregisterLive(h)
	if h.sweeper != nil {
		h.sweeper.close()
	}
	if h.topics != nil {
		h.topics.close()
	}
	return nil
}

// Len returns the number of items stored, including expired items not yet
// swept.
func (h *Handler) Len() int {
	if h.store == nil {
		return 0
	}
	return h.store.len()
}

// Bytes returns the key and value bytes stored, including those of expired
// items not yet swept. The per-item overhead counted against max_memory is
// not included, nor are topic messages.
func (h *Handler) Bytes() int64 {
	if h.store == nil {
		return 0
	}
	return h.store.size()
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
	switch {
	case strings.HasPrefix(path, cachePrefix):
		h.serveCache(w, r, path[len(cachePrefix):])
	case strings.HasPrefix(path, topicsPrefix):
		h.serveTopic(w, r, path[len(topicsPrefix):])
	default:
		return false
	}
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

// serveCache answers GET, PUT and DELETE on /cache/{cache}. Errors are
// written here as plain text rather than returned, because Caddy without
// handle_errors would answer them with an empty body.
func (h *Handler) serveCache(w http.ResponseWriter, r *http.Request, cache string) {
	q, ok := h.admit(w, r)
	if !ok {
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodPut, http.MethodDelete:
	default:
		w.Header().Set("Allow", "GET, PUT, DELETE")
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed on /cache/: use GET, PUT or DELETE")
		return
	}
	if problem := checkCacheName(cache); problem != "" {
		writeError(w, http.StatusBadRequest, "invalid cache name: "+problem)
		return
	}
	key, problem := q.itemKey()
	if problem != "" {
		writeError(w, http.StatusBadRequest, problem)
		return
	}
	var ttl time.Duration
	if r.Method == http.MethodPut {
		if ttl, problem = q.ttl(); problem != "" {
			writeError(w, http.StatusBadRequest, problem)
			return
		}
	}
	if !h.cacheExists(w, cache) {
		return
	}

	switch r.Method {
	case http.MethodGet:
		value, ok := h.store.get(cache, key)
		if !ok {
			writeError(w, http.StatusNotFound, "Key Not Found")
			return
		}
		// One allocation for both header values; capped so that an append
		// to one cannot overwrite the other.
		vals := []string{"application/octet-stream", strconv.Itoa(len(value))}
		hdr := w.Header()
		hdr["Content-Type"] = vals[0:1:1]
		hdr["Content-Length"] = vals[1:2:2]
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(value)
	case http.MethodPut:
		value, status, err := readValue(r, int64(len(key)), h.MaxItemSize)
		if err != nil {
			h.logger.Debug("not storing item", zap.String("cache", cache), zap.Error(err))
			writeError(w, status, err.Error())
			return
		}
		h.store.set(cache, key, value, ttl)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		h.store.delete(cache, key)
		w.WriteHeader(http.StatusNoContent)
	}
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

// readValue reads a PUT body that, with a key of keyLen bytes, fits in
// maxItemSize. On any failure it returns no value, the status to answer with
// and the reason: a truncated upload must never be stored as if it were the
// whole value.
func readValue(r *http.Request, keyLen, maxItemSize int64) ([]byte, int, error) {
	return readBody(r, maxItemSize-keyLen, func() error {
		return fmt.Errorf("item too large: key plus value exceed max_item_size (%d bytes)", maxItemSize)
	})
}

// readBody reads a request body of at most limit bytes, answering
// tooLarge's error with 413 when it is larger. Like readValue, it returns
// either the whole body or an error.
func readBody(r *http.Request, limit int64, tooLarge func() error) ([]byte, int, error) {
	if limit < 0 || r.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, tooLarge()
	}
	var value []byte
	var err error
	if r.ContentLength >= 0 {
		// The length is known and within bounds: read into a buffer of
		// exactly that size, which then becomes the stored copy.
		value = make([]byte, r.ContentLength)
		_, err = io.ReadFull(r.Body, value)
	} else {
		value, err = io.ReadAll(io.LimitReader(r.Body, limit+1))
		if err == nil && int64(len(value)) > limit {
			return nil, http.StatusRequestEntityTooLarge, tooLarge()
		}
		// Don't let append's spare capacity count as memory nobody sees.
		if cap(value)-len(value) > len(value)/8 {
			value = append([]byte(nil), value...)
		}
	}
	if err != nil {
		// An earlier handler such as request_body may have set a limit.
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return nil, http.StatusRequestEntityTooLarge, err
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err)
	}
	return value, 0, nil
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

// checkCacheName returns what is wrong with a cache name, or "".
func checkCacheName(name string) string { return checkName("cache", name) }

// checkName returns what is wrong with the name of a cache or topic (what),
// or "".
func checkName(what, name string) string {
	if name == "" {
		return what + " name is empty"
	}
	if strings.Contains(name, "/") {
		return what + " name must not contain '/'"
	}
	if strings.Contains(name, "..") {
		return what + " name must not contain '..'"
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x20 || c == 0x7f {
			return what + " name must not contain control characters"
		}
	}
	return ""
}

// query holds the query parameters the cache and topics APIs read, still
// undecoded where decoding is only needed for some operations.
type query struct {
	key            string
	keyBase64      string
	ttlSeconds     string
	token          string
	sequenceNumber string
	sequencePage   string
	hasKey         bool
	hasKeyBase64   bool
	hasTTL         bool
	hasToken       bool
	hasSeqNumber   bool
	hasSeqPage     bool
}

// parseQuery scans a raw query for the parameters the API reads. It
// avoids url.ParseQuery, which allocates a map and slices for every
// request, and unescapes only values that need it. Unknown parameters are
// ignored; a parameter given twice is a problem, since it is ambiguous.
func parseQuery(raw string) (query, string) {
	var q query
	for raw != "" {
		var part string
		part, raw, _ = strings.Cut(raw, "&")
		if part == "" {
			continue
		}
		name, value, _ := strings.Cut(part, "=")
		name, err := unescape(name)
		if err != nil {
			return q, "malformed query: " + err.Error()
		}
		var dst *string
		var seen *bool
		switch name {
		case "key":
			dst, seen = &q.key, &q.hasKey
		case "key_base64":
			dst, seen = &q.keyBase64, &q.hasKeyBase64
		case "ttl_seconds":
			dst, seen = &q.ttlSeconds, &q.hasTTL
		case "token":
			dst, seen = &q.token, &q.hasToken
		case "sequence_number":
			dst, seen = &q.sequenceNumber, &q.hasSeqNumber
		case "sequence_page":
			dst, seen = &q.sequencePage, &q.hasSeqPage
		default:
			continue
		}
		if *seen {
			return q, "query parameter " + name + " is given more than once"
		}
		if *dst, err = unescape(value); err != nil {
			return q, "malformed query: " + err.Error()
		}
		*seen = true
	}
	return q, ""
}

func unescape(s string) (string, error) {
	if !strings.ContainsAny(s, "%+") {
		return s, nil
	}
	return url.QueryUnescape(s)
}

// itemKey returns the key the request addresses: key as given, or the
// bytes key_base64 decodes to, so both forms address the same item.
func (q *query) itemKey() (string, string) {
	switch {
	case q.hasKey && q.hasKeyBase64:
		return "", "give exactly one of the key and key_base64 query parameters, not both"
	case q.hasKey:
		if q.key == "" {
			return "", "key is empty"
		}
		return q.key, ""
	case q.hasKeyBase64:
		// Momento's example omits the padding; accept it either way.
		b, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(q.keyBase64, "="))
		if err != nil {
			return "", "key_base64 is not valid URL-safe base64"
		}
		if len(b) == 0 {
			return "", "key_base64 is empty"
		}
		return string(b), ""
	default:
		return "", "missing key: give the key or key_base64 query parameter"
	}
}

// ttl returns the item lifetime a PUT asks for.
func (q *query) ttl() (time.Duration, string) {
	if !q.hasTTL {
		return 0, "missing ttl_seconds: give the item's lifetime in whole seconds"
	}
	n, err := strconv.ParseInt(q.ttlSeconds, 10, 64)
	if err != nil || n <= 0 {
		return 0, "ttl_seconds must be a positive whole number of seconds"
	}
	if n > maxTTLSeconds {
		return 0, fmt.Sprintf("ttl_seconds must be at most %d", maxTTLSeconds)
	}
	return time.Duration(n) * time.Second, ""
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
