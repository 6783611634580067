package momento

import (
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// prefixTemplate is a compiled key_prefix or topic_prefix template.
type prefixTemplate struct {
	directive string // key_prefix or topic_prefix, for messages
	template  string
	// static is true when the template has no placeholders: the replacer
	// is then never consulted on the hot path.
	static bool
	// escaped is the query-escaped static prefix (key_prefix).
	escaped string
}

func compilePrefix(directive, template string) *prefixTemplate {
	if template == "" {
		return nil
	}
	pt := &prefixTemplate{directive: directive, template: template, static: !strings.Contains(template, "{")}
	if pt.static {
		pt.escaped = url.QueryEscape(template)
	}
	return pt
}

var errEmptyPlaceholder = errors.New("empty placeholder in a prefix template")

// expand returns the prefix for this request. Placeholder values are
// query-escaped (all but letters, digits and -._~ are percent-encoded, a
// space becomes +), so they can never contain the template's own
// separators: one user's id cannot reach into another user's namespace. A
// placeholder that is unknown or empty for this request (typically: no
// authenticated user) refuses the request; it never falls back to the
// shared namespace.
func (pt *prefixTemplate) expand(r *http.Request) (string, *refusal) {
	if pt.static {
		return pt.template, nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	var empty string
	expanded, err := repl.ReplaceFunc(pt.template, func(name string, val any) (any, error) {
		s := caddy.ToString(val)
		if s == "" {
			empty = name
			return nil, errEmptyPlaceholder
		}
		return url.QueryEscape(s), nil
	})
	if err != nil {
		what := "a placeholder"
		if empty != "" {
			what = "{" + empty + "}"
		}
		return "", refuse(http.StatusForbidden, pt.directive+" needs "+what+", which is empty for this request: authenticate first")
	}
	return expanded, nil
}

// applyKey puts the key_prefix in front of the call's key.
func (pt *prefixTemplate) applyKey(c *call, r *http.Request) *refusal {
	if pt == nil {
		return nil
	}
	prefix, rf := pt.expand(r)
	if rf != nil {
		return rf
	}
	if c.keyBase64 {
		// Binary-safe: decode, prefix the bytes, re-encode.
		raw, _ := base64.RawURLEncoding.DecodeString(c.key) // validated when parsed
		buf := make([]byte, 0, len(prefix)+len(raw))
		buf = append(append(buf, prefix...), raw...)
		c.key = base64.RawURLEncoding.EncodeToString(buf)
		return nil
	}
	if pt.static {
		c.key = pt.escaped + c.key
	} else {
		c.key = url.QueryEscape(prefix) + c.key
	}
	return nil
}

// applyTopic puts the topic_prefix in front of the call's topic.
func (pt *prefixTemplate) applyTopic(c *call, r *http.Request) *refusal {
	if pt == nil {
		return nil
	}
	prefix, rf := pt.expand(r)
	if rf != nil {
		return rf
	}
	c.topic = prefix + c.topic
	return nil
}
