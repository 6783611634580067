package momento

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// AllowPolicy says what the clients of one momento handler may do. It is
// checked before any upstream call; a refused request never reaches the
// region. Several momento handlers under different matchers can each have
// their own policy (a read-only public site beside a full-access internal
// one, say).
type AllowPolicy struct {
	// Cache-name globs the clients may use (path.Match syntax). Default:
	// every cache that a route or the default region covers.
	Caches []string `json:"caches,omitempty"`

	// Operations the clients may perform: get, set, delete, publish,
	// subscribe. Default: all.
	Ops []string `json:"ops,omitempty"`

	// Longest TTL a set may ask for; a larger ttl_seconds is refused with
	// 400. Default: no limit beyond Momento's own.
	MaxTTL caddy.Duration `json:"max_ttl,omitempty"`
}

// opNames are the operations as users write them in `allow { ops … }`.
var opNames = []string{"get", "set", "delete", "publish", "subscribe"}

// checkOp returns why an operation name is unusable, or "".
func checkOp(name string) string {
	for _, n := range opNames {
		if n == name {
			return ""
		}
	}
	return fmt.Sprintf("unknown operation %q (use %s)", name, strings.Join(opNames, ", "))
}

// compiledPolicy is an AllowPolicy ready for the hot path.
type compiledPolicy struct {
	caches    []string
	ops       map[op]bool // nil: every op
	maxTTL    uint64      // seconds; 0: no limit
	cachesMsg string
	opsMsg    string
}

func (p *AllowPolicy) compile() (*compiledPolicy, error) {
	if p == nil {
		return nil, nil
	}
	cp := &compiledPolicy{caches: p.Caches}
	for _, g := range p.Caches {
		if msg := checkGlob(g); msg != "" {
			return nil, fmt.Errorf("allow caches: %s", msg)
		}
	}
	if len(p.Ops) > 0 {
		cp.ops = map[op]bool{}
		for _, name := range p.Ops {
			if msg := checkOp(name); msg != "" {
				return nil, fmt.Errorf("allow ops: %s", msg)
			}
			cp.ops[opFromName(name)] = true
		}
	}
	if p.MaxTTL < 0 {
		return nil, fmt.Errorf("allow max_ttl %s must be positive", time.Duration(p.MaxTTL))
	}
	if p.MaxTTL > 0 {
		cp.maxTTL = uint64(time.Duration(p.MaxTTL) / time.Second)
		if cp.maxTTL == 0 {
			return nil, fmt.Errorf("allow max_ttl %s is under a second; Momento TTLs are whole seconds", time.Duration(p.MaxTTL))
		}
	}
	cp.cachesMsg = strings.Join(p.Caches, " ")
	cp.opsMsg = strings.Join(p.Ops, " ")
	return cp, nil
}

func opFromName(name string) op {
	switch name {
	case "get":
		return opGet
	case "set":
		return opSet
	case "delete":
		return opDelete
	case "publish":
		return opPublish
	case "subscribe":
		return opSubscribe
	}
	return 0
}

// allows reports whether the policy permits op at all (used to answer
// CORS preflights with only the methods this handler accepts).
func (p *compiledPolicy) allows(o op) bool { return p == nil || p.ops == nil || p.ops[o] }

// check refuses a call the policy does not permit, naming the rule.
func (p *compiledPolicy) check(c *call) *refusal {
	if p == nil {
		return nil
	}
	if !p.allows(c.op) {
		return refuse(http.StatusForbidden, fmt.Sprintf("operation %s is not allowed here (allow ops: %s)", c.op, p.opsMsg))
	}
	if len(p.caches) > 0 {
		ok := false
		for _, g := range p.caches {
			if m, _ := path.Match(g, c.cache); m {
				ok = true
				break
			}
		}
		if !ok {
			return refuse(http.StatusForbidden, fmt.Sprintf("cache %q is not allowed here (allow caches: %s)", c.cache, p.cachesMsg))
		}
	}
	if p.maxTTL > 0 && c.op == opSet {
		// c.ttl was validated as a positive integer when parsed.
		if ttl, _ := strconv.ParseUint(c.ttl, 10, 64); ttl > p.maxTTL {
			return refuse(http.StatusBadRequest, fmt.Sprintf("ttl_seconds %d exceeds max_ttl (%d seconds)", ttl, p.maxTTL))
		}
	}
	return nil
}

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

// expand returns the prefix for this request. Placeholder values are
// query-escaped (all but letters, digits and -._~ are percent-encoded, a
// space becomes +), so they can never contain the template's own separators: one user's id cannot reach into
// another user's namespace. A placeholder that is unknown or empty for this
// request (typically: no authenticated user) refuses the request; it never
// falls back to the shared namespace.
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

var errEmptyPlaceholder = fmt.Errorf("empty placeholder in key_prefix")
