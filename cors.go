package momento

import (
	"cmp"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// CORSConfig lets browser pages on other origins call the gateway with
// fetch. Without it the gateway adds no CORS headers, browsers let only
// same-origin pages read answers, and the gateway refuses writes (set,
// delete, publish) that pages of other sites send.
type CORSConfig struct {
	// Origins allowed to call, exactly as browsers send them in the Origin
	// header, e.g. "https://app.example.com" or "http://localhost:3000".
	// "*" allows any origin (the matched origin is still echoed, never "*"),
	// but never "null" (sandboxed frames, data: and file: pages), and
	// cannot go with allow_credentials. A request from any other origin is
	// refused with 403, preflight or not.
	Origins []string `json:"origins,omitempty"`

	// How long browsers may cache a preflight answer. Default: not sent
	// (browsers use their own default, 5 seconds in Chromium).
	MaxAge caddy.Duration `json:"max_age,omitempty"`

	// Let pages send credentials (cookies, HTTP authentication) with
	// fetch(…, {credentials: "include"}): needed when an auth handler such as
	// basic_auth sits in front of the gateway.
	AllowCredentials bool `json:"allow_credentials,omitempty"`

	// Request headers pages may send besides Content-Type and Authorization,
	// e.g. the header an auth plugin reads.
	Headers []string `json:"headers,omitempty"`
}

// compiledCORS is a CORSConfig ready for the hot path.
type compiledCORS struct {
	origins       map[string]bool
	any           bool
	list          string
	allowMethods  string
	allowHeaders  string
	exposeHeaders string
	maxAge        string
	credentials   bool
}

// validate reports the first setting that cannot work.
func (c *CORSConfig) validate() error {
	if c == nil {
		return nil
	}
	if len(c.Origins) == 0 {
		return fieldErrorf("cors", "cors needs an origins line, e.g. origins https://app.example.com")
	}
	for _, o := range c.Origins {
		if msg := originProblem(o); msg != "" {
			return fieldErrorf("cors.origins", "cors: %s", msg)
		}
	}
	if c.MaxAge < 0 {
		return fieldErrorf("cors.max_age", "cors: max_age %s must be positive", time.Duration(c.MaxAge))
	}
	if c.AllowCredentials && slices.Contains(c.Origins, "*") {
		return fieldErrorf("cors.allow_credentials", "cors: allow_credentials with origins * would let every website read what signed-in users can: list the origins that may send credentials")
	}
	return nil
}

// compile prepares the CORS answers of a validated config. Pages may read
// Retry-After (on 503s) and the region header, when one is configured,
// besides the CORS-safelisted response headers.
func (c *CORSConfig) compile(policy *compiledPolicy, regionHeader string) *compiledCORS {
	if c == nil {
		return nil
	}
	cc := &compiledCORS{origins: map[string]bool{}, credentials: c.AllowCredentials, list: strings.Join(c.Origins, " ")}
	for _, o := range c.Origins {
		cc.any = cc.any || o == "*"
		cc.origins[o] = true
	}
	if c.MaxAge > 0 {
		cc.maxAge = strconv.FormatInt(int64(time.Duration(c.MaxAge)/time.Second), 10)
	}
	// Offer only the methods this handler's policy accepts.
	var methods []string
	for _, o := range allowableOps {
		if m := o.method(); policy.allows(o) && !slices.Contains(methods, m) {
			methods = append(methods, m)
		}
	}
	cc.allowMethods = strings.Join(methods, ", ")
	cc.allowHeaders = strings.Join(append([]string{"Content-Type", "Authorization"}, c.Headers...), ", ")
	cc.exposeHeaders = "Retry-After"
	if regionHeader != "" {
		cc.exposeHeaders += ", " + regionHeader
	}
	return cc
}

// originProblem returns why an origin is unusable, or "".
func originProblem(o string) string {
	if o == "*" {
		return ""
	}
	if !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") {
		return fmt.Sprintf("origin %q must be scheme://host[:port], e.g. https://app.example.com, or *", o)
	}
	if rest := o[strings.Index(o, "://")+3:]; rest == "" || strings.ContainsAny(rest, "/?#") {
		return fmt.Sprintf("origin %q must have no path (browsers send scheme://host[:port] only)", o)
	}
	return ""
}

// apply applies CORS to a request for the API. It sets the headers that
// let an allowed page read the answer (refusals included, so a page can
// show why), answers preflights itself, and refuses other origins. It
// returns the status it answered with, or 0 when the request goes on.
//
// Without a cors block no page of another site may write: a request that
// changes something (set, delete, publish) from another site is refused,
// since browsers send a simple cross-site POST (a form, say) without asking
// first, with the victim's credentials.
func (cc *compiledCORS) apply(w http.ResponseWriter, r *http.Request, c *call) int {
	if cc == nil {
		if c.op == opSet || c.op == opDelete || c.op == opPublish {
			if origin := r.Header.Get("Origin"); origin != "" && !sameHost(origin, r) || r.Header.Get("Sec-Fetch-Site") == "cross-site" {
				return refuse(http.StatusForbidden, fmt.Sprintf("a page of another site (origin %s) may not %s here: to let it, add a cors block with its origin to the momento handler",
					cmp.Or(origin, "unknown"), c.op)).write(w)
			}
		}
		return 0
	}
	hdr := w.Header()
	hdr.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin == "" || isSameOrigin(origin, r) {
		return 0
	}
	// "null" is the origin of sandboxed frames, data: and file: pages:
	// anyone can produce it, so it is never allowed, even by *.
	if origin == "null" || !cc.any && !cc.origins[origin] {
		return refuse(http.StatusForbidden, fmt.Sprintf("origin %s is not allowed (cors origins: %s)", origin, cc.list)).write(w)
	}
	hdr.Set("Access-Control-Allow-Origin", origin)
	if cc.credentials {
		hdr.Set("Access-Control-Allow-Credentials", "true")
	}
	if c.op != opOptions {
		hdr.Set("Access-Control-Expose-Headers", cc.exposeHeaders)
		return 0
	}
	hdr.Add("Vary", "Access-Control-Request-Method")
	hdr.Add("Vary", "Access-Control-Request-Headers")
	hdr.Set("Access-Control-Allow-Methods", cc.allowMethods)
	hdr.Set("Access-Control-Allow-Headers", cc.allowHeaders)
	if cc.maxAge != "" {
		hdr.Set("Access-Control-Max-Age", cc.maxAge)
	}
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

// writePreflight answers an OPTIONS request on the API that CORS did not
// answer (no cors block, or a same-origin page): the methods of the API.
func writePreflight(w http.ResponseWriter, c *call) int {
	allow := allowedCacheMethods
	if c.api == apiTopics {
		allow = allowedTopicMethods
	}
	w.Header().Set("Allow", allow)
	w.WriteHeader(http.StatusNoContent)
	return http.StatusNoContent
}

// sameHost reports whether the Origin names the host the request was sent
// to, whatever the scheme (TLS may end in front of Caddy).
func sameHost(origin string, r *http.Request) bool {
	_, host, ok := strings.Cut(origin, "://")
	return ok && host == r.Host
}

// isSameOrigin reports whether the Origin is the gateway's own: browsers
// send Origin on same-origin writes too, and those need no CORS.
func isSameOrigin(origin string, r *http.Request) bool {
	scheme := "http://"
	if r.TLS != nil {
		scheme = "https://"
	}
	return len(origin) == len(scheme)+len(r.Host) && strings.HasPrefix(origin, scheme) && origin[len(scheme):] == r.Host
}
