package momento

import (
	"fmt"
	"net/http"
	"path"
	"slices"
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

// validate reports the first rule that cannot work.
func (p *AllowPolicy) validate() error {
	if p == nil {
		return nil
	}
	for _, g := range p.Caches {
		if msg := globProblem(g); msg != "" {
			return fieldErrorf("allow.caches", "allow caches: %s", msg)
		}
	}
	for _, name := range p.Ops {
		if opFromName(name) == opInvalid {
			names := make([]string, len(allowableOps))
			for i, o := range allowableOps {
				names[i] = o.String()
			}
			return fieldErrorf("allow.ops", "allow ops: unknown operation %q (use %s)", name, strings.Join(names, ", "))
		}
	}
	switch {
	case p.MaxTTL < 0:
		return fieldErrorf("allow.max_ttl", "allow max_ttl %s must be positive", time.Duration(p.MaxTTL))
	case p.MaxTTL > 0 && p.MaxTTL < caddy.Duration(time.Second):
		return fieldErrorf("allow.max_ttl", "allow max_ttl %s is under a second; Momento TTLs are whole seconds", time.Duration(p.MaxTTL))
	}
	return nil
}

// compiledPolicy is an AllowPolicy ready for the hot path.
type compiledPolicy struct {
	caches    []string
	ops       [opCount]bool // all false: every op
	anyOp     bool
	maxTTL    uint64 // seconds; 0: no limit
	cachesMsg string
	opsMsg    string
}

// compile prepares a validated policy; nil allows everything.
func (p *AllowPolicy) compile() *compiledPolicy {
	if p == nil {
		return nil
	}
	cp := &compiledPolicy{
		caches:    p.Caches,
		anyOp:     len(p.Ops) == 0,
		maxTTL:    uint64(time.Duration(p.MaxTTL) / time.Second),
		cachesMsg: strings.Join(p.Caches, " "),
		opsMsg:    strings.Join(p.Ops, " "),
	}
	for _, name := range p.Ops {
		cp.ops[opFromName(name)] = true
	}
	return cp
}

// allows reports whether the policy permits op at all (used to answer
// CORS preflights with only the methods this handler accepts).
func (p *compiledPolicy) allows(o op) bool { return p == nil || p.anyOp || p.ops[o] }

// check refuses a call the policy does not permit, naming the rule.
func (p *compiledPolicy) check(c *call) *refusal {
	if p == nil {
		return nil
	}
	if !p.allows(c.op) {
		return refuse(http.StatusForbidden, fmt.Sprintf("operation %s is not allowed here (allow ops: %s)", c.op, p.opsMsg))
	}
	if len(p.caches) > 0 && !slices.ContainsFunc(p.caches, func(g string) bool { m, _ := path.Match(g, c.cache); return m }) {
		return refuse(http.StatusForbidden, fmt.Sprintf("cache %q is not allowed here (allow caches: %s)", c.cache, p.cachesMsg))
	}
	if p.maxTTL > 0 && c.op == opSet {
		if c.ttl > p.maxTTL {
			return refuse(http.StatusBadRequest, fmt.Sprintf("ttl_seconds %d exceeds max_ttl (%d seconds)", c.ttl, p.maxTTL))
		}
	}
	return nil
}
