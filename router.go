package momento

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// op is what a request asks Momento to do.
type op uint8

const (
	opGet op = iota + 1
	opSet
	opDelete
	opPublish
	opSubscribe
	// opOptions is a CORS preflight (or a plain OPTIONS) on an API path.
	opOptions
	// opCount bounds the ops, for tables indexed by op.
	opCount
)

// String is the operation's name as users write it in config and see it in
// logs and metrics.
func (o op) String() string {
	switch o {
	case opGet:
		return "get"
	case opSet:
		return "set"
	case opDelete:
		return "delete"
	case opPublish:
		return "publish"
	case opSubscribe:
		return "subscribe"
	case opOptions:
		return "options"
	}
	return "unknown"
}

// method is the HTTP method that asks for the operation.
func (o op) method() string {
	switch o {
	case opSet:
		return http.MethodPut
	case opDelete:
		return http.MethodDelete
	case opPublish:
		return http.MethodPost
	case opOptions:
		return http.MethodOptions
	}
	return http.MethodGet
}

// call is a request parsed once, at the edge: everything later steps need
// to decide and to build the upstream request. Nothing downstream looks at
// the URL again.
type call struct {
	op    op
	cache string
	// topic is the topic name (publish, subscribe).
	topic string
	// key is the key as the upstream query expects it: the client's key,
	// query-escaped, or for key_base64 the unpadded URL-safe base64 text.
	key       string
	keyBase64 bool
	// keySize is the client's key in bytes, decoded.
	keySize int
	// ttl is the validated ttl_seconds digits (set only).
	ttl string
	// seqNumber and seqPage are the validated subscribe cursor, "" if absent.
	seqNumber, seqPage string
	// contentType is a publish's validated Content-Type, forwarded as is.
	contentType string
	// hasTokenParam and hasAuthHeader record a credential of the client's
	// own: a token query parameter, an Authorization header.
	hasTokenParam bool
	hasAuthHeader bool

	// region and breakerState are decided later, and read by placeholders.
	region       *region
	breakerState string
	// status is the answer's status when the handler aborts the connection
	// after answering (it then cannot return it).
	status int
}

// setPlaceholders makes the call visible to the rest of Caddy (logs,
// headers, other handlers) as {http.momento.region}, {http.momento.cache},
// {http.momento.op} and {http.momento.breaker} (the region's breaker
// state: "open" when it refused the request, else its state when asked).
// The values are looked up when used, so they reflect what the gateway
// decided, and cost nothing when no placeholder asks for them.
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
			if c.breakerState == "" && c.region != nil {
				return c.region.pooled.breaker.state().String(), true
			}
			return c.breakerState, true
		}
		return nil, false
	})
}

// refusal is a request the gateway answers itself, with Momento's status
// codes and a plain-text message that names the problem.
type refusal struct {
	status int
	msg    string
	allow  string // Allow header, for 405
}

func refuse(status int, msg string) *refusal { return &refusal{status: status, msg: msg} }

// The API's path prefixes.
const (
	cachePrefix  = "/cache/"
	topicsPrefix = "/topics/"
)

// Allow headers on a 405, per API.
const (
	allowedCacheMethods = "GET, PUT, DELETE"
	allowedTopicMethods = "GET, POST"
)

// parseCall reads what the client asks for. It returns (nil, nil) for paths
// that are not Momento's API, which go to the next handler.
func parseCall(r *http.Request) (*call, *refusal) {
	p := r.URL.Path
	var c *call
	var rf *refusal
	switch {
	case strings.HasPrefix(p, cachePrefix):
		c, rf = parseCachePath(r.Method, p[len(cachePrefix):])
	case strings.HasPrefix(p, topicsPrefix):
		c, rf = parseTopicPath(r.Method, p[len(topicsPrefix):])
	default:
		return nil, nil
	}
	if rf != nil || c.op == opOptions {
		return c, rf
	}
	if rf := c.parseQuery(r.URL.RawQuery); rf != nil {
		return nil, rf
	}
	if c.op == opPublish {
		if rf := c.checkContentType(r.Header.Get("Content-Type")); rf != nil {
			return nil, rf
		}
	}
	c.hasAuthHeader = len(r.Header["Authorization"]) > 0
	return c, nil
}

func parseCachePath(method, cache string) (*call, *refusal) {
	c := &call{cache: cache}
	switch method {
	case http.MethodGet:
		c.op = opGet
	case http.MethodPut:
		c.op = opSet
	case http.MethodDelete:
		c.op = opDelete
	case http.MethodOptions:
		c.op = opOptions
		return c, nil
	default:
		return nil, &refusal{status: http.StatusMethodNotAllowed,
			msg:   "method " + method + " is not allowed on a cache; use GET, PUT or DELETE",
			allow: allowedCacheMethods}
	}
	if msg := checkName("cache", cache); msg != "" {
		return nil, refuse(http.StatusBadRequest, msg)
	}
	return c, nil
}

func parseTopicPath(method, rest string) (*call, *refusal) {
	cache, topic, _ := strings.Cut(rest, "/")
	c := &call{cache: cache, topic: topic}
	switch method {
	case http.MethodPost:
		c.op = opPublish
	case http.MethodGet:
		c.op = opSubscribe
	case http.MethodOptions:
		c.op = opOptions
		return c, nil
	default:
		return nil, &refusal{status: http.StatusMethodNotAllowed,
			msg:   "method " + method + " is not allowed on a topic; use POST to publish or GET to subscribe",
			allow: allowedTopicMethods}
	}
	if msg := checkName("cache", cache); msg != "" {
		return nil, refuse(http.StatusBadRequest, msg)
	}
	if topic == "" {
		return nil, refuse(http.StatusBadRequest, "topic name is missing: use /topics/{cacheName}/{topicName}")
	}
	if msg := checkName("topic", topic); msg != "" {
		return nil, refuse(http.StatusBadRequest, msg)
	}
	return c, nil
}

// maxNameSize bounds cache and topic names: far above any real name, far
// below what could hurt.
const maxNameSize = 255

// checkName returns why a cache or topic name is refused, or "".
func checkName(what, name string) string {
	if name == "" {
		return what + " name is missing: use /cache/{cacheName} or /topics/{cacheName}/{topicName}"
	}
	if len(name) > maxNameSize {
		return what + " name is longer than " + strconv.Itoa(maxNameSize) + " bytes"
	}
	if strings.Contains(name, "..") {
		return what + " name must not contain '..'"
	}
	for i := 0; i < len(name); i++ {
		switch b := name[i]; {
		case b == '/':
			return what + " name must not contain '/'"
		case b < 0x20 || b == 0x7f:
			return what + " name must not contain control characters"
		}
	}
	return ""
}

// checkContentType accepts what Momento accepts for a publish.
func (c *call) checkContentType(ct string) *refusal {
	mt, _, _ := strings.Cut(ct, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "text/plain", "application/octet-stream":
		c.contentType = ct
		return nil
	case "":
		return refuse(http.StatusBadRequest, "publish needs a Content-Type: text/plain (UTF-8) or application/octet-stream")
	}
	return refuse(http.StatusBadRequest, "Content-Type "+strconv.Quote(mt)+" cannot be published: use text/plain (UTF-8) or application/octet-stream")
}

// parseQuery scans the query once, without building a url.Values map:
// this runs on every request.
func (c *call) parseQuery(raw string) *refusal {
	var key, keyB64, ttl, seqNum, seqPage string
	var haveKey, haveKeyB64, haveTTL, haveSeqNum, haveSeqPage bool
	for raw != "" {
		var pair string
		pair, raw, _ = strings.Cut(raw, "&")
		if pair == "" {
			continue
		}
		if strings.IndexByte(pair, ';') >= 0 {
			return refuse(http.StatusBadRequest, "query contains ';': separate parameters with '&'")
		}
		name, value, _ := strings.Cut(pair, "=")
		if strings.ContainsAny(name, "%+") {
			n, err := url.QueryUnescape(name)
			if err != nil {
				return refuse(http.StatusBadRequest, "query parameter name is not valid URL encoding")
			}
			name = n
		}
		var seen *bool
		switch name {
		case "key":
			key, seen = value, &haveKey
		case "key_base64":
			keyB64, seen = value, &haveKeyB64
		case "ttl_seconds":
			ttl, seen = value, &haveTTL
		case "sequence_number":
			seqNum, seen = value, &haveSeqNum
		case "sequence_page":
			seqPage, seen = value, &haveSeqPage
		case "token":
			c.hasTokenParam = true
			continue
		default:
			// Momento's API has no other parameters; unknown ones are not
			// forwarded.
			continue
		}
		if *seen {
			return refuse(http.StatusBadRequest, "query parameter "+name+" is given more than once")
		}
		*seen = true
	}

	switch c.op {
	case opPublish:
		return nil
	case opSubscribe:
		if haveSeqNum {
			if !isUint(seqNum) {
				return refuse(http.StatusBadRequest, "sequence_number must be a whole number (0 at first, then the last received + 1)")
			}
			c.seqNumber = seqNum
		}
		if haveSeqPage {
			if !isUint(seqPage) {
				return refuse(http.StatusBadRequest, "sequence_page must be a whole number (0 at first, then the value received)")
			}
			c.seqPage = seqPage
		}
		return nil
	}

	switch {
	case haveKey && haveKeyB64:
		return refuse(http.StatusBadRequest, "give either key or key_base64, not both")
	case haveKey:
		k, err := url.QueryUnescape(key)
		if err != nil {
			return refuse(http.StatusBadRequest, "key is not valid URL encoding")
		}
		if k == "" {
			return refuse(http.StatusBadRequest, "key must not be empty")
		}
		// Re-escaped canonically: the upstream never sees a client's odd
		// but accepted encoding. QueryEscape does not allocate for plain keys.
		c.key, c.keySize = url.QueryEscape(k), len(k)
	case haveKeyB64:
		k, err := url.QueryUnescape(keyB64)
		if err != nil {
			return refuse(http.StatusBadRequest, "key_base64 is not valid URL encoding")
		}
		k = strings.TrimRight(k, "=")
		if k == "" {
			return refuse(http.StatusBadRequest, "key_base64 must not be empty")
		}
		if _, err := base64.RawURLEncoding.DecodeString(k); err != nil {
			return refuse(http.StatusBadRequest, "key_base64 is not URL-safe base64 (alphabet A-Z a-z 0-9 - _, padding optional)")
		}
		c.key, c.keyBase64, c.keySize = k, true, base64.RawURLEncoding.DecodedLen(len(k))
	default:
		return refuse(http.StatusBadRequest, "query parameter key (or key_base64) is required")
	}

	if c.op == opSet {
		if !haveTTL {
			return refuse(http.StatusBadRequest, "query parameter ttl_seconds is required to set a value")
		}
		if n, err := strconv.ParseUint(ttl, 10, 63); err != nil || n == 0 {
			return refuse(http.StatusBadRequest, "ttl_seconds must be a positive whole number of seconds")
		}
		c.ttl = ttl
	}
	return nil
}

// isUint reports whether s is a whole number that fits in 64 bits.
func isUint(s string) bool {
	_, err := strconv.ParseUint(s, 10, 64)
	return err == nil
}

// upstreamPath is the path on the region's endpoint.
func (c *call) upstreamPath(basePath string) string {
	if c.topic != "" {
		return basePath + topicsPrefix + c.cache + "/" + c.topic
	}
	return basePath + cachePrefix + c.cache
}

// upstreamQuery is the query sent to Momento: only what Momento needs,
// never a client's token.
func (c *call) upstreamQuery() string {
	switch c.op {
	case opPublish:
		return ""
	case opSubscribe:
		q := ""
		if c.seqNumber != "" {
			q = "sequence_number=" + c.seqNumber
		}
		if c.seqPage != "" {
			if q != "" {
				q += "&"
			}
			q += "sequence_page=" + c.seqPage
		}
		return q
	}
	var q string
	if c.keyBase64 {
		q = "key_base64=" + c.key
	} else {
		q = "key=" + c.key
	}
	if c.op == opSet {
		q += "&ttl_seconds=" + c.ttl
	}
	return q
}

// Route sends the caches whose names match a glob to one region.
type Route struct {
	// A glob on the cache name, as path.Match understands it: * matches any
	// run of characters, ? one, [a-z] a class. Example: "sessions-*".
	Cache string `json:"cache"`

	// The name of a configured region.
	Region string `json:"region"`
}

// checkGlob returns why a cache glob is unusable, or "".
func checkGlob(glob string) string {
	if glob == "" {
		return "cache glob is empty"
	}
	if _, err := path.Match(glob, ""); err != nil {
		return "cache glob " + strconv.Quote(glob) + " is malformed (check its [ ] classes and \\ escapes)"
	}
	return ""
}

// regionFor picks the region for a cache: the first matching route, else
// the default region; nil when neither applies.
func (h *Handler) regionFor(cache string) *region {
	for i := range h.routes {
		if ok, _ := path.Match(h.routes[i].glob, cache); ok {
			return h.routes[i].region
		}
	}
	return h.defaultRegion
}
