package momentolocal

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// The wire vocabulary in this file (the query scanner, key forms, name
// rules) is written again, on purpose, in the gateway's own request parser
// (the root package's call.go). Neither package imports the other's: the
// backend is the independent oracle the gateway's tests talk to, so a
// parsing mistake made in one place cannot pass both sides unnoticed. Keep
// them in step by what Momento documents, not by sharing code.

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
// request, and unescapes only values that need it. Only '&' separates
// parameters, as in browsers' URLSearchParams: a raw ';' is part of a
// value, so key=a;b is the key "a;b" (clients that do not encode keys send
// that). Unknown parameters are ignored; a parameter given twice is a
// problem, since it is ambiguous.
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

// wholeNumber parses the value of a query parameter that is a non-negative
// integer, 0 when absent.
func wholeNumber(name, value string, given bool) (uint64, string) {
	if !given {
		return 0, ""
	}
	n, err := strconv.ParseUint(value, 10, 64)
	if err != nil {
		return 0, name + " must be a whole number, 0 or more"
	}
	return n, ""
}
