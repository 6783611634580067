package momento

import (
	"cmp"
	"encoding/base64"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
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
	// key is the key's bytes, decoded, after key_prefix: the item the
	// region stores. keyBase64 says the client named it with key_base64,
	// and it is forwarded so.
	key       string
	keyBase64 bool
	// keySize is the client's key in bytes, decoded, before key_prefix.
	keySize int
	// ttl is the validated ttl_seconds (set only).
	ttl uint64
	// seqNumber and seqPage are the subscribe cursor, when given.
	seqNumber, seqPage       uint64
	hasSeqNumber, hasSeqPage bool
	// contentType is a publish's Content-Type, forwarded as is
	// (text/plain when the client sent none).
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
		// Momento takes every type (curl -d sends a form type, Momento's own
		// demo JSON): application/octet-stream is binary, the rest text.
		c.contentType = cmp.Or(r.Header.Get("Content-Type"), defaultPublishType)
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

// defaultPublishType is what a publish without a Content-Type is sent as:
// text, as Momento takes every type but application/octet-stream.
const defaultPublishType = "text/plain"

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
		// A ';' is a literal character (Go's url.ParseQuery refuses it, but
		// clients that do not encode keys send it, and Momento takes it):
		// the upstream query is built anew, so it is never a separator there.
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
		var ok bool
		if haveSeqNum {
			if c.seqNumber, ok = parseUint(seqNum); !ok {
				return refuse(http.StatusBadRequest, "sequence_number must be a whole number (0 at first, then the last received + 1)")
			}
			c.hasSeqNumber = true
		}
		if haveSeqPage {
			if c.seqPage, ok = parseUint(seqPage); !ok {
				return refuse(http.StatusBadRequest, "sequence_page must be a whole number (0 at first, then the value received)")
			}
			c.hasSeqPage = true
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
		c.key = k
	case haveKeyB64:
		k, err := url.QueryUnescape(keyB64)
		if err != nil {
			return refuse(http.StatusBadRequest, "key_base64 is not valid URL encoding")
		}
		if strings.TrimRight(k, "=") == "" {
			return refuse(http.StatusBadRequest, "key_base64 must not be empty")
		}
		raw, ok := decodeKeyBase64(k)
		if !ok {
			return refuse(http.StatusBadRequest, "key_base64 is not URL-safe base64 (alphabet A-Z a-z 0-9 - _, padding optional)")
		}
		c.key, c.keyBase64 = raw, true
	default:
		return refuse(http.StatusBadRequest, "query parameter key (or key_base64) is required")
	}
	c.keySize = len(c.key)

	if c.op == opSet {
		if !haveTTL {
			return refuse(http.StatusBadRequest, "query parameter ttl_seconds is required to set a value")
		}
		n, ok := parseUint(ttl)
		if !ok || n == 0 || n > maxTTLSeconds {
			return refuse(http.StatusBadRequest, "ttl_seconds must be a positive whole number of seconds")
		}
		c.ttl = n
	}
	return nil
}

// maxTTLSeconds keeps a TTL within what a time.Duration holds.
const maxTTLSeconds = 1<<63/uint64(time.Second) - 1

// decodeKeyBase64 decodes a key in URL-safe base64, unpadded or padded.
// Every byte is checked against the alphabet: Go's decoder skips CR and LF,
// which would otherwise pass validation here and then be forwarded.
func decodeKeyBase64(s string) (string, bool) {
	t := strings.TrimRight(s, "=")
	if pad := len(s) - len(t); pad > 2 || pad > 0 && len(s)%4 != 0 {
		return "", false
	}
	for i := 0; i < len(t); i++ {
		switch b := t[i]; {
		case 'A' <= b && b <= 'Z', 'a' <= b && b <= 'z', '0' <= b && b <= '9', b == '-', b == '_':
		default:
			return "", false
		}
	}
	raw, err := base64.RawURLEncoding.DecodeString(t)
	return string(raw), err == nil
}

// parseUint reads a whole number that fits in 64 bits, digits only.
func parseUint(s string) (uint64, bool) {
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// upstreamPath is the path on the region's endpoint.
func (c *call) upstreamPath(basePath string) string {
	if c.api == apiTopics {
		return basePath + topicsPrefix + c.cache + "/" + c.topic
	}
	return basePath + cachePrefix + c.cache
}

// upstreamQuery is the query sent to Momento, built anew from what was
// validated: only what Momento needs, in canonical form (a key escaped
// once, key_base64 re-encoded, numbers without leading zeros), never a
// client's bytes or token.
func (c *call) upstreamQuery() string {
	switch c.op {
	case opPublish:
		return ""
	case opSubscribe:
		var q []byte
		if c.hasSeqNumber {
			q = strconv.AppendUint(append(q, "sequence_number="...), c.seqNumber, 10)
		}
		if c.hasSeqPage {
			if len(q) > 0 {
				q = append(q, '&')
			}
			q = strconv.AppendUint(append(q, "sequence_page="...), c.seqPage, 10)
		}
		return string(q)
	}
	var q string
	if c.keyBase64 {
		q = "key_base64=" + base64.RawURLEncoding.EncodeToString([]byte(c.key))
	} else {
		q = "key=" + url.QueryEscape(c.key)
	}
	if c.op == opSet {
		q += "&ttl_seconds=" + strconv.FormatUint(c.ttl, 10)
	}
	return q
}
