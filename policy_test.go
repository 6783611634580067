package momento

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
)

func TestAllowRules(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\tallow {\n\t\t\tcaches public-* shared\n\t\t\tops get set\n\t\t\tmax_ttl 1h\n\t\t}\n\t}")

	// Refused: each names its rule, and none reaches the region.
	expect(t, g.get("/cache/private?key=k"), http.StatusForbidden, `cache "private" is not allowed here (allow caches: public-* shared)`)
	expect(t, g.do(http.MethodDelete, "/cache/public-1?key=k", nil), http.StatusForbidden, "operation delete is not allowed here (allow ops: get set)")
	expect(t, g.put("/cache/public-1?key=k&ttl_seconds=3601", "v"), http.StatusBadRequest, "ttl_seconds 3601 exceeds max_ttl (3600 seconds)")
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("refused requests reached the region %d times", n)
	}

	// Allowed.
	expect(t, g.put("/cache/public-1?key=k&ttl_seconds=3600", "v"), http.StatusNoContent, "")
	expect(t, g.get("/cache/public-1?key=k"), http.StatusOK, "v")
	expect(t, g.get("/cache/shared?key=k"), http.StatusNotFound, "Key Not Found")
	if n := up.hits.Load(); n != 3 {
		t.Fatalf("allowed requests reached the region %d times, want 3", n)
	}
}

// A read-only public handler and a full-access internal one, side by side
// under different matchers, in front of the same region.
func TestTwoHandlersSideBySide(t *testing.T) {
	up, _ := localUpstream(t, "t")
	region := regionBlock("r", up.URL, "t")
	g := startGateway(t, "\thandle_path /public/* {\n\t\tmomento {\n"+region+"\t\t\tallow {\n\t\t\t\tops get\n\t\t\t}\n\t\t}\n\t}\n"+
		"\thandle_path /internal/* {\n\t\tmomento {\n"+region+"\t\t}\n\t}")

	expect(t, g.put("/public/cache/c?key=k&ttl_seconds=60", "v"), http.StatusForbidden, "operation set is not allowed here (allow ops: get)")
	expect(t, g.put("/internal/cache/c?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
	expect(t, g.get("/public/cache/c?key=k"), http.StatusOK, "v")
	expect(t, g.do(http.MethodDelete, "/public/cache/c?key=k", nil), http.StatusForbidden, "operation delete")
	expect(t, g.do(http.MethodDelete, "/internal/cache/c?key=k", nil), http.StatusNoContent, "")
}

// basicAuthBlock puts two users in front of the directives that follow.
// Preflights carry no credentials, so OPTIONS is let through.
const basicAuthBlock = `	@signedIn not method OPTIONS
	basic_auth @signedIn {
		alice $2a$10$olWCYWaPXYAdTwT0XPZXXesueUXxI8MIfpcDQ7k7WswrCoGEJzT3.
		bob $2a$10$fme7tkfKlIe3dTBQujwGGuHvtM0DrM6zQspZX7CrPw6HPyLeATuD2
	}
`

func TestKeyPrefixPerUser(t *testing.T) {
	up, lh := localUpstream(t, "t")
	g := startGateway(t, basicAuthBlock+"\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix {http.auth.user.id}:\n\t}")
	as := func(user, method, target, body string) response {
		var r response
		if body == "" {
			r = g.do(method, target, nil, "Authorization", basicAuth(user))
		} else {
			r = g.do(method, target, strings.NewReader(body), "Authorization", basicAuth(user))
		}
		return r
	}

	expect(t, as("alice", "PUT", "/cache/c?key=cart&ttl_seconds=60", "alice's cart"), http.StatusNoContent, "")
	if got := up.lastURI.Load(); got != "/cache/c?key=alice%3Acart&ttl_seconds=60" {
		t.Fatalf("upstream saw %v; want alice's prefix on the key", got)
	}
	expect(t, as("bob", "PUT", "/cache/c?key=cart&ttl_seconds=60", "bob's cart"), http.StatusNoContent, "")
	expect(t, as("alice", "GET", "/cache/c?key=cart", ""), http.StatusOK, "alice's cart")
	expect(t, as("bob", "GET", "/cache/c?key=cart", ""), http.StatusOK, "bob's cart")
	if lh.Len() != 2 {
		t.Fatalf("backend holds %d items, want 2 (one per user)", lh.Len())
	}

	// key_base64 is binary-safe: the prefix goes on the decoded bytes.
	binKey := []byte{0xff, 0x00, 'k'}
	b64 := base64.RawURLEncoding.EncodeToString(binKey)
	expect(t, as("alice", "PUT", "/cache/c?key_base64="+b64+"&ttl_seconds=60", "binary"), http.StatusNoContent, "")
	want := base64.RawURLEncoding.EncodeToString(append([]byte("alice:"), binKey...))
	if got := up.lastURI.Load(); got != "/cache/c?key_base64="+want+"&ttl_seconds=60" {
		t.Fatalf("upstream saw %v; want key_base64=%s", got, want)
	}
	expect(t, as("alice", "GET", "/cache/c?key_base64="+b64, ""), http.StatusOK, "binary")
	expect(t, as("bob", "GET", "/cache/c?key_base64="+b64, ""), http.StatusNotFound, "Key Not Found")

	// Alice cannot reach Bob's namespace by crafting a key.
	expect(t, as("alice", "GET", "/cache/c?key=..%2Fbob%3Acart", ""), http.StatusNotFound, "Key Not Found")
}

// Without a signed-in user, the prefix template is empty: refused, never
// the shared namespace. (No auth handler in front here at all.)
func TestKeyPrefixWithoutUserIsRefused(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix {http.auth.user.id}:\n\t}")
	expect(t, g.get("/cache/c?key=k"), http.StatusForbidden, "key_prefix needs {http.auth.user.id}, which is empty for this request")
	expect(t, g.put("/cache/c?key=k&ttl_seconds=5", "v"), http.StatusForbidden, "key_prefix needs")
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("refused requests reached the region %d times", n)
	}
}

func TestKeyPrefixEscapesPlaceholderValues(t *testing.T) {
	up, _ := localUpstream(t, "t")
	// A user id that contains the template's separator cannot collide with
	// another user's namespace.
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix {http.request.header.X-User}:\n\t}")
	expect(t, g.do(http.MethodGet, "/cache/c?key=k", nil, "X-User", "alice:x"), http.StatusNotFound, "Key Not Found")
	if got := up.lastURI.Load(); got != "/cache/c?key=alice%253Ax%3Ak" {
		t.Fatalf("upstream saw %v", got)
	}
}

func TestStaticKeyPrefix(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix app1/\n\t}")
	expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
	if got := up.lastURI.Load(); got != "/cache/c?key=app1%2Fk" {
		t.Fatalf("upstream saw %v", got)
	}
}

func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+user+"-password"))
}

func TestCORS(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\tallow {\n\t\t\tops get set\n\t\t}\n"+
		"\t\tcors {\n\t\t\torigins https://app.example.com http://localhost:3000\n\t\t\tmax_age 10m\n\t\t\tallow_credentials\n\t\t}\n\t}")

	// Preflight from an allowed origin: answered by the gateway, with the
	// methods this handler's policy allows.
	r := g.do(http.MethodOptions, "/cache/c?key=k", nil, "Origin", "https://app.example.com",
		"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type")
	expect(t, r, http.StatusNoContent, "")
	for h, want := range map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Methods":     "GET, PUT",
		"Access-Control-Allow-Headers":     "Content-Type, Authorization",
		"Access-Control-Max-Age":           "600",
		"Access-Control-Allow-Credentials": "true",
	} {
		if got := r.header.Get(h); got != want {
			t.Errorf("preflight %s = %q, want %q", h, got, want)
		}
	}
	if !strings.Contains(strings.Join(r.header.Values("Vary"), ","), "Origin") {
		t.Errorf("preflight Vary %q lacks Origin", r.header.Values("Vary"))
	}

	// Preflight from another origin: 403.
	r = g.do(http.MethodOptions, "/cache/c?key=k", nil, "Origin", "https://evil.example",
		"Access-Control-Request-Method", "PUT")
	expect(t, r, http.StatusForbidden, "origin https://evil.example is not allowed (cors origins: https://app.example.com http://localhost:3000)")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("refused preflight carries Access-Control-Allow-Origin")
	}

	// Actual requests from an allowed origin carry the echoed origin, even
	// refusals (so the page can read why).
	r = g.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=60", strings.NewReader("v"), "Origin", "http://localhost:3000")
	expect(t, r, http.StatusNoContent, "")
	if r.header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" || r.header.Get("Vary") != "Origin" {
		t.Errorf("response headers %v", r.header)
	}
	r = g.do(http.MethodPut, "/cache/c?key=k", strings.NewReader("v"), "Origin", "http://localhost:3000")
	expect(t, r, http.StatusBadRequest, "ttl_seconds is required")
	if r.header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" {
		t.Error("refusal lacks Access-Control-Allow-Origin: the page could not read the message")
	}

	// Actual requests from another origin are refused (a simple request
	// needs no preflight, so the browser alone would not stop it).
	hits := up.hits.Load()
	expect(t, g.do(http.MethodGet, "/cache/c?key=k", nil, "Origin", "https://evil.example"), http.StatusForbidden, "is not allowed")
	if up.hits.Load() != hits {
		t.Error("a request from a refused origin reached the region")
	}

	// Same-origin and origin-less requests need no CORS.
	r = g.do(http.MethodGet, "/cache/c?key=k", nil, "Origin", g.base)
	expect(t, r, http.StatusOK, "v")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("same-origin response carries CORS headers")
	}
	expect(t, g.get("/cache/c?key=k"), http.StatusOK, "v")
}

func TestNoCORSWithoutCORSBlock(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	r := g.do(http.MethodOptions, "/cache/c?key=k", nil, "Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT")
	if r.header.Get("Access-Control-Allow-Origin") != "" || r.header.Get("Access-Control-Allow-Methods") != "" {
		t.Fatalf("CORS headers without a cors block: %v", r.header)
	}
	r = g.do(http.MethodGet, "/cache/c?key=k", nil, "Origin", "https://app.example.com")
	expect(t, r, http.StatusNotFound, "Key Not Found")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("CORS headers without a cors block: %v", r.header)
	}
	if up.hits.Load() != 1 {
		t.Fatalf("region saw %d requests, want 1 (the OPTIONS is answered by the gateway)", up.hits.Load())
	}
}

func TestPolicyCaddyfileErrors(t *testing.T) {
	cases := []struct{ block, want string }{
		{"allow {\n ops get fetch\n }", `allow ops: unknown operation "fetch" (use get, set, delete, publish, subscribe)`},
		{"allow {\n caches [oops\n }", `allow caches: cache glob "[oops" is malformed`},
		{"allow {\n max_ttl 500ms\n }", "max_ttl 500ms is under a second"},
		{"allow {\n writes yes\n }", `unknown subdirective "writes" in allow`},
		{"cors {\n max_age 1m\n }", "cors needs an origins line"},
		{"cors {\n origins app.example.com\n }", `origin "app.example.com" must be scheme://host[:port]`},
		{"cors {\n origins https://app.example.com/path\n }", "must have no path"},
		{"cors {\n allow_credentials yes\n origins *\n }", "wrong argument count"},
		{"key_prefix a b", "key_prefix takes one value"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			cf := ":8080 {\n\tmomento {\n region us-east-1 {\n token x\n }\n " + tc.block + "\n\t}\n}\n"
			_, _, err := adaptCaddyfile(cf)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error %v; want it to contain %q and a line", err, tc.want)
			}
		})
	}
}
