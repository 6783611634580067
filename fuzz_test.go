package momento

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// Fuzz targets. Their seed corpora are the f.Add calls below plus the
// files under testdata/fuzz/<FuzzName>/; `.ci/run` runs each for a short,
// bounded time on top of them.

// FuzzParseCall: every request is either a well-formed call, or a 4xx
// with a message; a call never carries a client's token upstream.
func FuzzParseCall(f *testing.F) {
	for _, s := range [][3]string{
		{"GET", "/cache/demo?key=hello", ""},
		{"PUT", "/cache/demo?key=hello&ttl_seconds=60", ""},
		{"DELETE", "/cache/demo?key_base64=aGVsbG8", ""},
		{"GET", "/cache/a%2Fb?key=x&token=mine", "Bearer x"},
		{"PUT", "/cache/c?key=%0D%0AHost:%20evil&ttl_seconds=1", ""},
		{"POST", "/topics/c/t", "text/plain"},
		{"GET", "/topics/c/t?sequence_number=3&sequence_page=7", ""},
		{"GET", "/topics/c/t?sequence_number=-1", ""},
		{"OPTIONS", "/cache/c?key=k", ""},
		{"GET", "/cache/c?key=a;b", ""},
		{"PATCH", "/cache/c", ""},
		{"GET", "/elsewhere", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, method, target, header string) {
		r, err := http.NewRequest(method, "http://gateway"+target, nil)
		if err != nil {
			return
		}
		r.Header.Set("Content-Type", header)
		r.Header.Set("Authorization", header)
		c, ours := parseCall(r)
		switch {
		case c != nil && c.refusal != nil:
			if rf := c.refusal; rf.status < 400 || rf.status > 499 || rf.msg == "" {
				t.Fatalf("refusal %d %q", rf.status, rf.msg)
			}
		case !ours:
			if strings.HasPrefix(r.URL.Path, cachePrefix) || strings.HasPrefix(r.URL.Path, topicsPrefix) {
				t.Fatalf("API path %q neither parsed nor refused", r.URL.Path)
			}
		case c.op == opOptions:
		default:
			checkCallInvariants(t, c)
		}
	})
}

func checkCallInvariants(t *testing.T, c *call) {
	t.Helper()
	if msg := nameProblem("cache", c.cache); msg != "" {
		t.Fatalf("accepted cache name %q: %s", c.cache, msg)
	}
	q := c.upstreamQuery()
	if strings.Contains(q, "token") {
		t.Fatalf("upstream query %q carries a token parameter", q)
	}
	u := url.URL{Scheme: "http", Host: "region", Path: c.upstreamPath(""), RawQuery: q}
	parsed, err := url.Parse(u.String())
	if err != nil {
		t.Fatalf("upstream URL %q does not parse: %v", u.String(), err)
	}
	vals, err := url.ParseQuery(parsed.RawQuery)
	if err != nil {
		t.Fatalf("upstream query %q does not parse: %v", q, err)
	}
	switch c.op {
	case opGet, opSet, opDelete:
		if c.topic != "" || (vals.Get("key") == "") == (vals.Get("key_base64") == "") {
			t.Fatalf("cache call with query %q", q)
		}
		if c.op == opSet && (vals.Get("ttl_seconds") == "" || vals.Get("ttl_seconds") == "0") {
			t.Fatalf("set without a positive ttl: %q", q)
		}
	case opPublish, opSubscribe:
		if msg := nameProblem("topic", c.topic); msg != "" {
			t.Fatalf("accepted topic name %q: %s", c.topic, msg)
		}
	default:
		t.Fatalf("unknown op %v", c.op)
	}
}

// FuzzParseToken: token detection never fails, and the token never shows
// through the Token type's formatting.
func FuzzParseToken(f *testing.F) {
	for _, s := range []string{testV1Token, testLegacyToken, testV2Token, "local-dev-token", "", "a.b.c", "eyJ9.eyJ9.x", "e30="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		tok := parseToken(raw)
		switch tok.Kind() {
		case TokenV1, TokenLegacy, TokenV2, TokenOpaque:
		default:
			t.Fatalf("kind %q", tok.Kind())
		}
		if ep := tok.Endpoint(); ep != "" && !strings.HasPrefix(ep, "https://api.") {
			t.Fatalf("endpoint %q", ep)
		}
		trimmed := strings.TrimSpace(raw)
		if trimmed != "" && tok.authHeader()[0] == "" && tok.Kind() != TokenV1 {
			t.Fatalf("token %q sends no header", raw)
		}
		// Every way of printing it gives the redacted form and nothing else.
		r := tok.redacted()
		if got := fmt.Sprint(tok); got != r {
			t.Fatalf("Sprint gives %q", got)
		}
		if got, want := fmt.Sprintf("%#v %q %x %+v", tok, tok, tok, tok), r+" "+r+" "+r+" "+r; got != want {
			t.Fatalf("formatting gives %q", got)
		}
		if js, _ := json.Marshal(tok); string(js) != strconv.Quote(r) {
			t.Fatalf("JSON gives %s", js)
		}
	})
}

// FuzzKeyPrefix: for every template that loads, two different users never
// reach the same item, whatever keys they choose; the prefix lands in front
// of the key byte for byte (key and key_base64 alike); an empty user is
// refused.
func FuzzKeyPrefix(f *testing.F) {
	f.Add("{http.auth.user.id}:", "alice", "alice:x", "cart", "x:cart", false)
	f.Add("{http.auth.user.id}-", "a", "a-b", "b-x", "x", true)
	f.Add("{http.auth.user.id}.", "a.b", "a", "c", "b.c", false)
	f.Add("app/{http.auth.user.id}/", "", "bob", "k", "k", false)
	f.Add("{http.auth.user.id}+", "a b", "a+b", "k", "k", false)
	f.Add("static-", "bob", "eve", "\x00\xff", "k", true)
	f.Fuzz(func(t *testing.T, template, user1, user2, key1, key2 string, b64 bool) {
		if key1 == "" || key2 == "" || template == "" || strings.Count(template, "{") > 4 {
			return // no key_prefix configured, or no key: nothing to apply
		}
		if validatePrefix("key_prefix", template) != nil {
			return // refused at load
		}
		pt := compilePrefix("key_prefix", template)
		upstreamKey := func(user, key string) (string, bool) {
			repl := caddy.NewReplacer()
			if user != "" {
				repl.Set("http.auth.user.id", user)
			}
			r := httptest.NewRequest(http.MethodGet, "http://gateway/", nil)
			r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
			c := &call{api: apiCache, op: opGet, key: key, keyBase64: b64}
			prefix, expandRefusal := pt.expand(r)
			rf := pt.apply(c, r)
			if (rf == nil) != (expandRefusal == nil) {
				t.Fatal("expand and apply disagree")
			}
			if rf != nil {
				if rf.status != http.StatusForbidden {
					t.Fatalf("refusal %d", rf.status)
				}
				return "", false
			}
			// What the region receives decodes to prefix and key.
			vals, err := url.ParseQuery(c.upstreamQuery())
			if err != nil {
				t.Fatal(err)
			}
			got := vals.Get("key")
			if b64 {
				raw, err := base64.RawURLEncoding.DecodeString(vals.Get("key_base64"))
				if err != nil {
					t.Fatal(err)
				}
				got = string(raw)
			}
			if got != prefix+key {
				t.Fatalf("key %q with prefix %q reached the region as %q", key, prefix, got)
			}
			return got, true
		}
		k1, ok1 := upstreamKey(user1, key1)
		k2, ok2 := upstreamKey(user2, key2)
		if ok1 && ok2 && user1 != user2 && strings.Contains(template, "{http.auth.user.id}") && k1 == k2 {
			t.Fatalf("users %q and %q reach the same item %q (template %q)", user1, user2, k1, template)
		}
	})
}

// FuzzCaddyfile: any Caddyfile text either fails with an error or gives a
// config that passes the load-time checks, and an error never shows a
// token.
func FuzzCaddyfile(f *testing.F) {
	f.Add("momento {\n region us-east-1 {\n token {env.MOMENTO_API_KEY}\n }\n}")
	f.Add("momento {\n region local {\n endpoint http://127.0.0.1:9091\n token secret-token-abcdefgh\n }\n route a-* local\n breaker {\n failures 3\n failure_ratio 0.5\n }\n allow {\n ops get\n }\n cors {\n origins *\n }\n}")
	f.Add("momento {\n region x {\n token secret-token-abcdefgh extra\n }\n}")
	f.Add("momento {\n region us-east-1 {\n token " + testV1Token + "\n }\n}")
	f.Fuzz(func(t *testing.T, input string) {
		tokens, err := caddyfile.Tokenize([]byte(input), "Caddyfile")
		if err != nil {
			return
		}
		h := new(Handler)
		err = h.UnmarshalCaddyfile(caddyfile.NewDispenser(tokens))
		if err != nil {
			// The value of a `token` subdirective (first on its line, inside
			// a block) is a secret. Text written elsewhere in the file that
			// holds it (an address "0NTO_APIe" around a token "NTO_APIe") is
			// not: an error may quote that.
			elsewhere := func(j int, secret string) bool {
				for k, tk := range tokens {
					if k != j && strings.Contains(tk.Text, secret) {
						return true
					}
				}
				return false
			}
			depth := 0
			for i := 0; i+1 < len(tokens); i++ {
				switch tokens[i].Text {
				case "{":
					depth++
				case "}":
					depth--
				}
				firstOnLine := i > 0 && tokens[i-1].Line != tokens[i].Line
				// (A placeholder such as {env.X} names a secret; it is not one.)
				if secret := tokens[i+1].Text; tokens[i].Text == "token" && firstOnLine && depth > 0 &&
					len(secret) >= 8 && !strings.Contains(secret, "{") && strings.Contains(err.Error(), secret) && !elsewhere(i+1, secret) {
					t.Fatalf("error shows a token: %v", err)
				}
			}
			return
		}
		if err := h.Validate(); err != nil {
			t.Fatalf("parsed, but Validate refuses it: %v\n%s", err, input)
		}
	})
}

// FuzzServeHTTP drives the real handler, provisioned as Caddy does, in
// front of the embedded backend: no panic, only expected statuses, the
// token never in an answer, and a request that parsing refuses never
// reaches the region.
func FuzzServeHTTP(f *testing.F) {
	f.Add("PUT", "/cache/c?key=k&ttl_seconds=5", "v")
	f.Add("GET", "/cache/c?key=k&token=x", "")
	f.Add("DELETE", "/cache/c%00?key=k", "")
	f.Add("POST", "/topics/c/t", "hello")
	f.Add("GET", "/cache/c?key_base64=____", "")
	const secret = "fuzz-secret-token-0123456789"
	lh, err := momentolocal.New(momentolocal.Handler{Token: secret})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = lh.Close() })
	var hits atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		lh.HTTPHandler().ServeHTTP(w, r)
	}))
	f.Cleanup(srv.Close)
	// A subscribe waits for a message, up to subscribe_timeout: a short one,
	// so that a long poll the fuzzer makes ends (with 200 and no items).
	h := provisionHandler(f, Handler{Regions: []RegionConfig{{Name: "fuzz", Endpoint: srv.URL, Token: secret}}, Timeout: caddy.Duration(2e9),
		SubscribeTimeout: caddy.Duration(10 * time.Millisecond)})
	f.Fuzz(func(t *testing.T, method, target, body string) {
		r, err := http.NewRequest(method, "http://gateway"+target, strings.NewReader(body))
		if err != nil {
			return
		}
		r.Header.Set("Content-Type", "text/plain")
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		c, _ := parseCall(r)
		refused := c != nil && c.refusal != nil
		before := hits.Load()
		w := httptest.NewRecorder()
		if err := h.ServeHTTP(w, r, nextHandler{}); err != nil {
			t.Fatal(err)
		}
		if refused && hits.Load() != before {
			t.Fatalf("refused request %s %s reached the region", method, target)
		}
		if strings.Contains(w.Body.String(), secret) || strings.Contains(fmt.Sprint(w.Header()), secret) {
			t.Fatal("the token is in the answer")
		}
		switch w.Code {
		case 200, 204, 400, 401, 403, 404, 405, 413, 418:
		default:
			t.Fatalf("%s %s: status %d %q", method, target, w.Code, w.Body.String())
		}
	})
}

// nextHandler stands for the rest of the route: a teapot, so tests can see
// that a request went on.
type nextHandler struct{}

func (nextHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) error {
	w.WriteHeader(http.StatusTeapot)
	return nil
}

// provisionHandler provisions a handler as Caddy would, in the context of
// a loaded config that holds only the momento app (with a quiet logger),
// so the handler can be called directly.
func provisionHandler(tb testing.TB, cfg Handler) *Handler {
	tb.Helper()
	if err := caddy.Load([]byte(`{"admin":{"disabled":true},"logging":{"logs":{"default":{"level":"ERROR"}}},"apps":{"momento":{}}}`), true); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = caddy.Stop() })
	ctx, cancel := caddy.NewContext(caddy.ActiveContext())
	tb.Cleanup(cancel)
	h := cfg
	if err := h.Provision(ctx); err != nil {
		tb.Fatal(err)
	}
	h.logger = zap.NewNop()
	for _, rg := range h.regions {
		rg.state.breaker.logger.Store(zap.NewNop())
	}
	return &h
}
