package momento

import (
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
)

// op is what a request asks Momento to do.
type op uint8

const (
	opInvalid op = iota // a request to the API that could not be parsed
	opGet
	opSet
	opDelete
	opPublish
	opSubscribe
	// opOptions is a CORS preflight (or a plain OPTIONS) on an API path.
	opOptions
	// opCount bounds the ops, for tables indexed by op.
	opCount
)

// opNames are the operations as users write them in config (`allow { ops
// … }`) and see them in logs and metrics.
var opNames = [opCount]string{"invalid", "get", "set", "delete", "publish", "subscribe", "options"}

// allowableOps are the operations an `allow { ops … }` rule may name.
var allowableOps = []op{opGet, opSet, opDelete, opPublish, opSubscribe}

// String is the operation's name.
func (o op) String() string {
	if o < opCount {
		return opNames[o]
	}
	return "unknown"
}

// opFromName is the operation a user names, or opInvalid.
func opFromName(name string) op {
	for _, o := range allowableOps {
		if opNames[o] == name {
			return o
		}
	}
	return opInvalid
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

// api is which of Momento's APIs a path belongs to.
type api uint8

const (
	apiCache api = iota + 1
	apiTopics
)

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

// call is a request parsed once, at the edge: everything later steps need
// to decide and to build the upstream request. Nothing downstream looks at
// the URL again.
type call struct {
	api api
	op  op
	// refusal is set when the request is malformed: it is answered with it.
	refusal *refusal

	cache string
	// topic is the topic name (publish, subscribe), after topic_prefix.
	topic string
	// key is the key as the upstream query expects it, after key_prefix:
	// the client's key, query-escaped, or for key_base64 the unpadded
	// URL-safe base64 text.
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
	// bodySize is the request's declared Content-Length (-1: chunked).
	bodySize int64
	// hasTokenParam and hasAuthHeader record a credential of the client's
	// own: a token query parameter, an Authorization header.
	hasTokenParam bool
	hasAuthHeader bool

	// region is the region the call was routed to, and breakerOpen whether
	// its breaker refused the call: what the placeholders show.
	region      *region
	breakerOpen bool
}

// parseCall reads what the client asks for. It reports false for paths
// that are not Momento's API, which go to the next handler; a malformed
// request to the API is a call with its refusal set.
func parseCall(r *http.Request) (*call, bool) {
	p := r.URL.Path
	c := &call{bodySize: r.ContentLength}
	switch {
	case strings.HasPrefix(p, cachePrefix):
		c.api, c.cache = apiCache, p[len(cachePrefix):]
	case strings.HasPrefix(p, topicsPrefix):
		c.api = apiTopics
		c.cache, c.topic, _ = strings.Cut(p[len(topicsPrefix):], "/")
	default:
		return nil, false
	}
	if c.op = methodOp(c.api, r.Method); c.op == opOptions {
		return c, true
	}
	c.refusal = c.parseRequest(r)
	return c, true
}

// methodOp is the operation an HTTP method asks for on an API, or
// opInvalid.
func methodOp(a api, method string) op {
	switch {
	case method == http.MethodOptions:
		return opOptions
	case method == http.MethodGet && a == apiCache:
		return opGet
	case method == http.MethodPut && a == apiCache:
		return opSet
	case method == http.MethodDelete && a == apiCache:
		return opDelete
	case method == http.MethodPost && a == apiTopics:
		return opPublish
	case method == http.MethodGet && a == apiTopics:
		return opSubscribe
	}
	return opInvalid
}

// parseRequest checks the method, the names and the query, and returns the
// first problem.
func (c *call) parseRequest(r *http.Request) *refusal {
	if c.op == opInvalid {
		if c.api == apiTopics {
			return &refusal{status: http.StatusMethodNotAllowed, allow: allowedTopicMethods,
				msg: "method " + r.Method + " is not allowed on a topic; use POST to publish or GET to subscribe"}
		}
		return &refusal{status: http.StatusMethodNotAllowed, allow: allowedCacheMethods,
			msg: "method " + r.Method + " is not allowed on a cache; use GET, PUT or DELETE"}
	}
	if rf := checkName("cache", c.cache); rf != nil {
		return rf
	}
	if c.api == apiTopics {
		if c.topic == "" {
			return refuse(http.StatusBadRequest, "topic name is missing: use /topics/{cacheName}/{topicName}")
		}
		if rf := checkName("topic", c.topic); rf != nil {
			return rf
		}
	}
	if rf := c.parseQuery(r.URL.RawQuery); rf != nil {
		return rf
	}
	if c.op == opPublish {
		if rf := c.checkContentType(r.Header.Get("Content-Type")); rf != nil {
			return rf
		}
	}
	c.hasAuthHeader = len(r.Header["Authorization"]) > 0
	return nil
}

// maxNameSize bounds cache and topic names: far above any real name, far
// below what could hurt.
const maxNameSize = 255

// checkName refuses a cache or topic name the gateway will not forward.
func checkName(what, name string) *refusal {
	if msg := nameProblem(what, name); msg != "" {
		return refuse(http.StatusBadRequest, msg)
	}
	return nil
}

// nameProblem returns why a cache or topic name is unusable, or "".
func nameProblem(what, name string) string {
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
	if c.api == apiTopics {
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
