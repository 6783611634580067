package momento

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// RegionConfig is one region the gateway can reach: a Momento region (or
// another Momento-compatible endpoint) and the token for it.
//
// A region is defined once per config, in the global `momento` options or
// inside a `momento` handler; a handler may also refer to a region defined
// in the global options by its name alone.
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
	// `caddy adapt` prints or the admin API serves. A region with neither a
	// token nor an endpoint refers to the region of that name defined in the
	// global `momento` options.
	Token string `json:"token,omitempty"`

	// When the region's circuit breaker opens and how it recovers. In a
	// handler, the handler's own breaker settings apply when this is unset.
	Breaker *BreakerConfig `json:"breaker,omitempty"`

	// How many subscriptions (long polls) the gateway keeps open to the
	// region at once; past it a client is answered 429 with Retry-After and
	// nothing is sent. Default: 100, Momento's default account limit per
	// region.
	MaxSubscriptions int `json:"max_subscriptions,omitempty"`

	// The cache operations (gets, sets, deletes) a second the gateway sends
	// the region: the account's limit there (Momento's default is 100).
	// Past it a client is answered 429 with Retry-After and nothing is
	// sent, and the operations are shared among the clients sending them
	// (see the README's "Limits"). Default: none configured; the gateway
	// learns the limit from the region's 429s, and meters only while the
	// region refuses.
	MaxOpsPerSecond int `json:"max_ops_per_second,omitempty"`

	// The publishes a second the gateway sends the region, as
	// max_ops_per_second (Momento's default limit is 10). Default: none
	// configured; learned likewise.
	MaxPublishesPerSecond int `json:"max_publishes_per_second,omitempty"`

	// Where the region is defined, e.g. "Caddyfile:12". The Caddyfile
	// adapter sets it so that errors found only when the config loads (an
	// unset {env.*} token, a token for another region) name the line too.
	DefinedAt string `json:"defined_at,omitempty"`
}

// isReference reports whether the config only names a region defined in
// the global options.
func (rc RegionConfig) isReference() bool {
	return rc.Token == "" && rc.Endpoint == "" && rc.Breaker == nil && rc.MaxSubscriptions == 0 &&
		rc.MaxOpsPerSecond == 0 && rc.MaxPublishesPerSecond == 0
}

// same reports whether two definitions of a region agree on everything
// but where they stand, breaker defaults applied.
func (rc RegionConfig) same(other RegionConfig) bool {
	return rc.Name == other.Name && rc.Endpoint == other.Endpoint && rc.Token == other.Token &&
		rc.Breaker.withDefaults() == other.Breaker.withDefaults() && rc.MaxSubscriptions == other.MaxSubscriptions &&
		rc.MaxOpsPerSecond == other.MaxOpsPerSecond && rc.MaxPublishesPerSecond == other.MaxPublishesPerSecond
}

// builtinCells maps each Momento region to its cell. The HTTP endpoint of a
// region is https://api.cache.<cell>.prod.a.momentohq.com.
var builtinCells = map[string]string{
	"us-east-1":      "cell-us-east-1-1",
	"us-east-2":      "cell-1-us-east-2-1",
	"us-west-2":      "cell-4-us-west-2-1",
	"eu-west-1":      "cell-1-eu-west-1-1",
	"eu-west-2":      "cell-1-eu-west-2-1",
	"eu-central-1":   "cell-1-eu-central-1-1",
	"eu-north-1":     "cell-1-eu-north-1-1",
	"ap-south-1":     "cell-1-ap-south-1-1",
	"ap-northeast-1": "cell-ap-northeast-1-1",
	"ap-southeast-1": "cell-1-ap-southeast-1-1",
	"ap-southeast-2": "cell-1-ap-southeast-2-1",
}

// builtinEndpoint returns the HTTP API endpoint of one of Momento's own
// regions, and false for a name outside the table.
func builtinEndpoint(region string) (string, bool) {
	cell, ok := builtinCells[region]
	if !ok {
		return "", false
	}
	return "https://api.cache." + cell + ".prod.a.momentohq.com", true
}

// regionOf is the name of the Momento region whose endpoint this is.
func regionOf(endpoint string) (string, bool) {
	for name := range builtinCells {
		if ep, _ := builtinEndpoint(name); ep == endpoint {
			return name, true
		}
	}
	return "", false
}

// builtinRegions lists the names of Momento's regions, sorted.
func builtinRegions() []string { return slices.Sorted(maps.Keys(builtinCells)) }

// normalizeEndpoint checks that raw is an http(s) URL with a host and no
// query, and returns it as scheme://host[:port][/path] without a trailing slash.
func normalizeEndpoint(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("endpoint %q is not a URL: %v", raw, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return "", fmt.Errorf("endpoint %q must start with https:// (or http:// for a local backend)", raw)
	}
	if u.Host == "" {
		return "", fmt.Errorf("endpoint %q has no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("endpoint %q must not carry a query, fragment or user info", raw)
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + strings.TrimRight(u.Path, "/"), nil
}

// region is a configured region in one config: where its requests go, with
// which token, and its state shared across handlers and reloads.
type region struct {
	name     string
	endpoint string // normalized, e.g. https://api.cache.cell-….momentohq.com
	scheme   string
	host     string
	basePath string // path prefix of a custom endpoint, usually ""
	token    Token
	breaker  BreakerConfig // with defaults
	// maxSubscriptions bounds the upstream long polls open at once.
	maxSubscriptions int
	// maxOpsPerSecond and maxPublishesPerSecond are the configured
	// budgets (0: learned).
	maxOpsPerSecond, maxPublishesPerSecond int

	// state is kept across reloads (see app.go).
	state   *regionState
	metrics *regionMetrics
	// rejectMsg starts the 503 body while the breaker is open.
	rejectMsg string
}

// resolveRegion resolves the region's placeholders and works out its
// endpoint from the config, the built-in table and the token.
func resolveRegion(rc RegionConfig, repl *caddy.Replacer) (*region, error) {
	rg := &region{name: rc.Name, breaker: rc.Breaker.withDefaults(), maxSubscriptions: cmp.Or(rc.MaxSubscriptions, defaultMaxSubscriptions),
		maxOpsPerSecond: rc.MaxOpsPerSecond, maxPublishesPerSecond: rc.MaxPublishesPerSecond}

	if rc.Token == "" {
		return nil, fmt.Errorf("region %q: no token configured: add `token {env.MOMENTO_API_KEY}` (or {file./path}) to it", rc.Name)
	}
	// The replacer's errors name the placeholder, never its value.
	rawToken, err := repl.ReplaceOrErr(rc.Token, true, true)
	if err != nil {
		return nil, fmt.Errorf("region %q: token: %v: set the variable or file it names", rc.Name, err)
	}
	if strings.TrimSpace(rawToken) == "" {
		return nil, fmt.Errorf("region %q: token is empty after resolving placeholders", rc.Name)
	}
	rg.token = parseToken(rawToken)

	configured := ""
	if rc.Endpoint != "" {
		ep, err := repl.ReplaceOrErr(rc.Endpoint, true, true)
		if err != nil {
			return nil, fmt.Errorf("region %q: endpoint: %v", rc.Name, err)
		}
		if configured, err = normalizeEndpoint(ep); err != nil {
			return nil, fmt.Errorf("region %q: %v", rc.Name, err)
		}
	}
	builtin, isBuiltin := builtinEndpoint(rc.Name)
	fromToken := rg.token.Endpoint()

	switch {
	case configured != "":
		rg.endpoint = configured
	case isBuiltin:
		rg.endpoint = builtin
	case fromToken != "":
		rg.endpoint = fromToken
	default:
		return nil, fmt.Errorf("region %q is not one of Momento's regions (%s) and its %s token names no endpoint: add `endpoint https://…` to the region",
			rc.Name, strings.Join(builtinRegions(), ", "), rg.token.Kind())
	}
	if fromToken != "" && fromToken != rg.endpoint {
		source := "configured"
		if configured == "" {
			source = "built in for " + rc.Name
		}
		fix := "fix the region name or endpoint, or use the token issued for this region"
		if name, ok := regionOf(fromToken); ok && configured == "" {
			fix = fmt.Sprintf("the token is for region %s: name the region %s (with Caddyfile.example, set MOMENTO_REGION=%s), or use a token issued for %s", name, name, name, rc.Name)
		}
		return nil, fmt.Errorf("region %q: endpoint %s (%s) disagrees with %s named by the region's %s token (fingerprint %s): %s",
			rc.Name, rg.endpoint, source, fromToken, rg.token.Kind(), rg.token.Fingerprint(), fix)
	}

	u, err := url.Parse(rg.endpoint)
	if err != nil {
		return nil, fmt.Errorf("region %q: %v", rc.Name, err)
	}
	rg.scheme, rg.host, rg.basePath = u.Scheme, u.Host, u.Path
	rg.metrics = newRegionMetrics(rg.name)
	rg.rejectMsg = "region " + rg.name + " is unavailable: its circuit breaker is open after repeated failures; retry in "
	return rg, nil
}

// isLoopback reports whether the region is on this machine (a local
// backend, whose token is no secret).
func (rg *region) isLoopback() bool {
	host := rg.host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
