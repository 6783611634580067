package momento

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

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

// BuiltinEndpoint returns the HTTP API endpoint of one of Momento's own
// regions, and false for a name outside the table.
func BuiltinEndpoint(region string) (string, bool) {
	cell, ok := builtinCells[region]
	if !ok {
		return "", false
	}
	return "https://api.cache." + cell + ".prod.a.momentohq.com", true
}

// BuiltinRegions lists the names of Momento's regions, sorted.
func BuiltinRegions() []string {
	names := make([]string, 0, len(builtinCells))
	for n := range builtinCells {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

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

// TokenKind says which of Momento's credential formats a token is.
type TokenKind string

// The credential formats the gateway recognises, as the SDKs tell them apart.
const (
	// TokenV1 is a v1 API key: base64 of JSON {"api_key": <jwt>, "endpoint": <host>}.
	TokenV1 TokenKind = "v1"
	// TokenLegacy is a JWT whose claims carry the cache endpoint in "c".
	TokenLegacy TokenKind = "legacy"
	// TokenV2 is a JWT with claim t="g"; it works in any region and carries no endpoint.
	TokenV2 TokenKind = "v2"
	// TokenOpaque is anything else (a local backend's token, say); it is sent unchanged.
	TokenOpaque TokenKind = "opaque"
)

// Token is a Momento credential held by the gateway. It cannot be printed:
// every formatting path (fmt verbs, JSON, zap) yields a redacted form, so a
// token that slips into a log line or error message stays secret. The value
// sits behind a pointer so that even fmt's reflection over a struct that
// holds a Token prints an address, not the secret.
type Token struct {
	secret *tokenSecret
}

type tokenSecret struct {
	// header is what goes upstream in the authorization header: for v1 keys
	// the inner api_key, as the SDKs send it; otherwise the token as given.
	header string
	// headerValues is header as an http.Header value, built once and shared
	// by every request (the transport only reads it).
	headerValues []string
	// fingerprint identifies the token in logs without revealing it.
	fingerprint string
	kind        TokenKind
	// endpoint is the HTTP endpoint the token names, if any.
	endpoint string
}

// ParseToken recognises the format of a Momento credential and derives the
// HTTP endpoint it names, if any. It never fails: an unrecognised token is
// opaque and passes upstream unchanged. Nothing about the token's content
// is ever put in an error.
func ParseToken(raw string) Token {
	t := parseToken(raw)
	t.secret.headerValues = []string{t.secret.header}
	return t
}

func parseToken(raw string) Token {
	raw = strings.TrimSpace(raw)
	sum := sha256.Sum256([]byte(raw))
	s := &tokenSecret{header: raw, fingerprint: hex.EncodeToString(sum[:4]), kind: TokenOpaque}

	// The SDKs' rule: standard base64 of JSON is a v1 key; else a JWT.
	if decoded, err := base64.StdEncoding.DecodeString(raw); err == nil {
		var v1 struct {
			APIKey   string `json:"api_key"`
			Endpoint string `json:"endpoint"`
		}
		if json.Unmarshal(decoded, &v1) == nil && v1.APIKey != "" {
			s.kind = TokenV1
			s.header = v1.APIKey
			if v1.Endpoint != "" {
				s.endpoint = "https://api.cache." + strings.ToLower(strings.TrimSuffix(v1.Endpoint, "."))
			}
			return Token{s}
		}
	}
	if claims, ok := jwtClaims(raw); ok {
		var c struct {
			C string `json:"c"`
			T string `json:"t"`
		}
		if json.Unmarshal(claims, &c) == nil {
			switch {
			case c.T == "g":
				s.kind = TokenV2
			case c.C != "":
				s.kind = TokenLegacy
				// c is the SDKs' cache host, "cache.<endpoint>"; HTTP is "api." in front.
				s.endpoint = "https://api." + strings.ToLower(strings.TrimSuffix(c.C, "."))
			}
		}
	}
	return Token{s}
}

// jwtClaims returns the decoded payload of a JWT, without verifying it:
// the gateway only reads which endpoint the token names.
func jwtClaims(raw string) ([]byte, bool) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, false
	}
	return payload, true
}

// IsZero reports whether no token is held.
func (t Token) IsZero() bool { return t.secret == nil || t.secret.header == "" }

// Kind is the token's format.
func (t Token) Kind() TokenKind {
	if t.secret == nil {
		return ""
	}
	return t.secret.kind
}

// Fingerprint is a short, non-reversible identifier of the token (the first
// 8 hex digits of its SHA-256), safe for logs and the admin API.
func (t Token) Fingerprint() string {
	if t.secret == nil {
		return ""
	}
	return t.secret.fingerprint
}

// Endpoint is the HTTP endpoint the token names (v1 and legacy tokens), or "".
func (t Token) Endpoint() string {
	if t.secret == nil {
		return ""
	}
	return t.secret.endpoint
}

// headerValue is the value of the authorization header sent upstream.
// It and authHeader are the only ways to read the secret, unexported on
// purpose.
func (t Token) headerValue() string {
	if t.secret == nil {
		return ""
	}
	return t.secret.header
}

// authHeader is headerValue as a header value slice, shared by requests.
func (t Token) authHeader() []string {
	if t.secret == nil {
		return nil
	}
	return t.secret.headerValues
}

func (t Token) redacted() string {
	if t.secret == nil {
		return "[no token]"
	}
	return "[token " + string(t.secret.kind) + " " + t.secret.fingerprint + "]"
}

// String redacts the token.
func (t Token) String() string { return t.redacted() }

// GoString redacts the token for %#v.
func (t Token) GoString() string { return t.redacted() }

// Format redacts the token for every fmt verb (%x and %q included).
func (t Token) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, t.redacted()) }

// MarshalJSON redacts the token, so encoders (zap's reflection included) never see it.
func (t Token) MarshalJSON() ([]byte, error) { return json.Marshal(t.redacted()) }

// MarshalText redacts the token for text encoders.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.redacted()), nil }

// region is a configured region at run time: where to send requests, with
// which token, through which breaker and connection pool.
type region struct {
	name     string
	endpoint string // normalized, e.g. https://api.cache.cell-….momentohq.com
	scheme   string
	host     string
	basePath string // path prefix of a custom endpoint, usually ""
	token    Token

	pooled  *pooledRegion
	poolKey string
	metrics *regionMetrics
	// rejectMsg starts the 503 body while the breaker is open.
	rejectMsg string
}

// resolveRegion resolves the region's placeholders and works out its
// endpoint from the config, the built-in table and the token.
func resolveRegion(rc RegionConfig, repl *caddy.Replacer) (*region, error) {
	rg := &region{name: rc.Name}

	if rc.Token == "" {
		return nil, fmt.Errorf("region %q: no token configured: add `token {env.MOMENTO_API_KEY}` (or {file./path})", rc.Name)
	}
	// The replacer's errors name the placeholder, never its value.
	rawToken, err := repl.ReplaceOrErr(rc.Token, true, true)
	if err != nil {
		return nil, fmt.Errorf("region %q: token: %v: set the variable or file it names", rc.Name, err)
	}
	if strings.TrimSpace(rawToken) == "" {
		return nil, fmt.Errorf("region %q: token is empty after resolving placeholders", rc.Name)
	}
	rg.token = ParseToken(rawToken)

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
	builtin, isBuiltin := BuiltinEndpoint(rc.Name)
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
			rc.Name, strings.Join(BuiltinRegions(), ", "), rg.token.Kind())
	}
	if fromToken != "" && fromToken != rg.endpoint {
		source := "configured"
		if configured == "" {
			source = "built in for " + rc.Name
		}
		return nil, fmt.Errorf("region %q: endpoint %s (%s) disagrees with %s named by the region's %s token (fingerprint %s): fix the region name or endpoint, or use the token issued for this region",
			rc.Name, rg.endpoint, source, fromToken, rg.token.Kind(), rg.token.Fingerprint())
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

// regionPool holds each region's breaker and connection pool across config
// reloads, keyed by region name and endpoint: a reload that keeps a region
// keeps its breaker state and warm connections; one that removes the region
// or changes its endpoint starts fresh.
var regionPool = caddy.NewUsagePool()

// pooledRegion is the state of a region that outlives one config.
type pooledRegion struct {
	name      string
	endpoint  string
	breaker   *breaker
	transport *http.Transport
	longPoll  *http.Transport // subscribes

	// facts is what the admin API shows of the token the latest config
	// gave this region (a reload may change the token, not the endpoint).
	facts atomic.Pointer[regionFacts]
	// attached orders the pooled regions of one name across overlapping
	// configs: the latest attach is the one in force.
	attached atomic.Uint64
}

type regionFacts struct {
	tokenKind        TokenKind
	tokenFingerprint string
}

var attachSeq atomic.Uint64

// Destruct closes idle upstream connections once no config uses the region.
func (p *pooledRegion) Destruct() error {
	p.transport.CloseIdleConnections()
	p.longPoll.CloseIdleConnections()
	return nil
}

// attach takes (or creates) the region's pooled state and applies the
// current breaker settings to it.
func (rg *region) attach(cfg BreakerConfig, logger *zap.Logger) error {
	rg.poolKey = rg.name + " " + rg.endpoint
	val, loaded, err := regionPool.LoadOrNew(rg.poolKey, func() (caddy.Destructor, error) {
		return &pooledRegion{
			name:      rg.name,
			endpoint:  rg.endpoint,
			breaker:   newBreaker(rg.name, cfg, logger),
			transport: newTransport(),
			longPoll:  newTransport(),
		}, nil
	})
	if err != nil {
		return fmt.Errorf("region %q: %v", rg.name, err)
	}
	rg.pooled = val.(*pooledRegion)
	if loaded {
		rg.pooled.breaker.logger.Store(logger)
		rg.pooled.breaker.configure(cfg)
	}
	rg.pooled.facts.Store(&regionFacts{tokenKind: rg.token.Kind(), tokenFingerprint: rg.token.Fingerprint()})
	rg.pooled.attached.Store(attachSeq.Add(1))
	return nil
}

// detach releases this config's hold on the pooled state. rg.pooled stays
// set: requests of the outgoing config may still be draining through it.
func (rg *region) detach() {
	if rg.pooled != nil {
		_, _ = regionPool.Delete(rg.poolKey)
	}
}

// pooledRegions returns the regions in force, one per name (the latest
// attached when overlapping configs name it with different endpoints),
// sorted by name.
func pooledRegions() []*pooledRegion {
	latest := map[string]*pooledRegion{}
	regionPool.Range(func(_, v any) bool {
		p := v.(*pooledRegion)
		if cur, ok := latest[p.name]; !ok || p.attached.Load() > cur.attached.Load() {
			latest[p.name] = p
		}
		return true
	})
	out := make([]*pooledRegion, 0, len(latest))
	for _, p := range latest {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
