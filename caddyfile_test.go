package momento

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
)

// TestCaddyfileAdapt runs testdata/caddyfile/*.caddytest: a Caddyfile, a
// line of dashes, and the JSON that `caddy adapt` must produce for it.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob("testdata/caddyfile/*.caddytest")
	if err != nil || len(files) == 0 {
		t.Fatalf("no adapt tests found: %v", err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			cf, want, ok := strings.Cut(string(raw), "\n----------\n")
			if !ok {
				t.Fatal("missing ---------- separator")
			}
			got, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
			if err != nil {
				t.Fatalf("adapt: %v", err)
			}
			var gotV, wantV any
			if err := json.Unmarshal(got, &gotV); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal([]byte(want), &wantV); err != nil {
				t.Fatalf("expected JSON in %s: %v", f, err)
			}
			if !reflect.DeepEqual(gotV, wantV) {
				pretty, _ := json.MarshalIndent(gotV, "", "\t")
				t.Errorf("adapted JSON differs.\ngot:\n%s\nwant:\n%s", pretty, want)
			}
		})
	}
}

// Tokens in Momento's three formats, made up for tests.
var (
	// v1: base64 of {"api_key": <jwt>, "endpoint": <us-west-2's cell>}.
	testV1Token = "eyJhcGlfa2V5IjoiaW5uZXIuand0LmtleSIsImVuZHBvaW50IjoiY2VsbC00LXVzLXdlc3QtMi0xLnByb2QuYS5tb21lbnRvaHEuY29tIn0="
	// legacy JWT with c = cache.<us-west-2's cell>.
	testLegacyToken = "eyJhbGciOiJIUzI1NiJ9.eyJjIjoiY2FjaGUuY2VsbC00LXVzLXdlc3QtMi0xLnByb2QuYS5tb21lbnRvaHEuY29tIiwiY3AiOiJjb250cm9sLmNlbGwtNC11cy13ZXN0LTItMS5wcm9kLmEubW9tZW50b2hxLmNvbSJ9.c2ln"
	// v2 JWT with t = "g".
	testV2Token = "eyJhbGciOiJIUzI1NiJ9.eyJ0IjoiZyJ9.c2ln"
)

func TestCaddyfileErrors(t *testing.T) {
	cases := []struct {
		name  string
		block string
		want  []string // substrings of the error
	}{
		{"unknown subdirective", "momento {\n region us-east-1 {\n token x\n }\n frobnicate\n}",
			[]string{`unknown subdirective "frobnicate"`, "Caddyfile:8"}},
		{"unknown region subdirective", "momento {\n region us-east-1 {\n token x\n tls on\n }\n}",
			[]string{`unknown subdirective "tls" in region "us-east-1"`, "Caddyfile:7"}},
		{"unknown breaker subdirective", "momento {\n region us-east-1 {\n token x\n }\n breaker {\n retries 3\n }\n}",
			[]string{`unknown subdirective "retries" in breaker`, "Caddyfile:9"}},
		{"no region", "momento {\n timeout 1s\n}", []string{"at least one region", "Caddyfile:"}},
		{"unknown region without endpoint", "momento {\n region mars-1 {\n token opaque-token\n }\n}",
			[]string{`region "mars-1" is not one of Momento's regions`, "us-east-1", "add `endpoint", "Caddyfile:5"}},
		{"region without token", "momento {\n region us-east-1 {\n }\n}",
			[]string{`region "us-east-1": no token configured`, "Caddyfile:5"}},
		{"duplicate region", "momento {\n region us-east-1 {\n token a\n }\n region us-east-1 {\n token b\n }\n}",
			[]string{`region "us-east-1" is configured twice`, "Caddyfile:8"}},
		{"route to undefined region", "momento {\n region us-east-1 {\n token a\n }\n route orders-* us-est-1\n}",
			[]string{`route "orders-*": region "us-est-1" is not configured (configured: us-east-1)`, "Caddyfile:8"}},
		{"default to undefined region", "momento {\n region us-east-1 {\n token a\n }\n default_region eu-west-9\n}",
			[]string{`default_region "eu-west-9" is not configured`, "Caddyfile:8"}},
		{"bad glob", "momento {\n region us-east-1 {\n token a\n }\n route sess[ions us-east-1\n}",
			[]string{`cache glob "sess[ions" is malformed`, "Caddyfile:8"}},
		{"route arity", "momento {\n region us-east-1 {\n token a\n }\n route only-one\n}",
			[]string{"route takes a cache glob and a region name", "Caddyfile:8"}},
		{"bad timeout", "momento {\n region us-east-1 {\n token a\n }\n timeout soon\n}",
			[]string{`timeout "soon": give a positive duration`, "Caddyfile:8"}},
		{"negative timeout", "momento {\n region us-east-1 {\n token a\n }\n timeout -5s\n}",
			[]string{`timeout "-5s": give a positive duration`, "Caddyfile:8"}},
		{"bad window", "momento {\n region us-east-1 {\n token a\n }\n breaker {\n window 0s\n }\n}",
			[]string{`window "0s": give a positive duration`, "Caddyfile:9"}},
		{"bad open_for", "momento {\n region us-east-1 {\n token a\n }\n breaker {\n open_for -1m\n }\n}",
			[]string{`open_for "-1m": give a positive duration`, "Caddyfile:9"}},
		{"ratio above 1", "momento {\n region us-east-1 {\n token a\n }\n breaker {\n failure_ratio 1.5\n }\n}",
			[]string{`failure_ratio "1.5": give a number greater than 0 and at most 1`, "Caddyfile:9"}},
		{"ratio negative", "momento {\n region us-east-1 {\n token a\n }\n breaker {\n failure_ratio -0.1\n }\n}",
			[]string{`failure_ratio "-0.1"`, "Caddyfile:9"}},
		{"failures zero", "momento {\n region us-east-1 {\n token a\n }\n breaker {\n failures 0\n }\n}",
			[]string{`breaker failures "0": give a positive whole number`, "Caddyfile:9"}},
		{"bad client_token", "momento {\n region us-east-1 {\n token a\n }\n client_token keep\n}",
			[]string{`client_token "keep": use strip or reject`, "Caddyfile:8"}},
		{"bad max_item_size", "momento {\n region us-east-1 {\n token a\n }\n max_item_size lots\n}",
			[]string{`max_item_size "lots"`, "Caddyfile:8"}},
		{"bad endpoint scheme", "momento {\n region local {\n endpoint ftp://example.com\n token a\n }\n}",
			[]string{"must start with https://", "Caddyfile:6"}},
		{"token takes one value", "momento {\n region us-east-1 {\n token a b\n }\n}",
			[]string{"token takes one value", "Caddyfile:6"}},
		{"v1 token for another region", "momento {\n region us-east-1 {\n token " + testV1Token + "\n }\n}",
			[]string{`region "us-east-1"`, "https://api.cache.cell-us-east-1-1.prod.a.momentohq.com (built in for us-east-1)",
				"disagrees with https://api.cache.cell-4-us-west-2-1.prod.a.momentohq.com", "the token is for region us-west-2", "MOMENTO_REGION=us-west-2", "Caddyfile:5"}},
		{"repeated timeout", "momento {\n region us-east-1 {\n token a\n }\n timeout 1s\n timeout 2s\n}",
			[]string{"timeout is given twice (first at Caddyfile:8)", "Caddyfile:9"}},
		{"repeated token", "momento {\n region us-east-1 {\n token a\n token b\n }\n}",
			[]string{"token is given twice (first at Caddyfile:6)", "Caddyfile:7"}},
		{"repeated breaker setting", "momento {\n region us-east-1 {\n token a\n }\n breaker {\n failures 2\n failures 3\n }\n}",
			[]string{"failures is given twice (first at Caddyfile:9)", "Caddyfile:10"}},
		{"reference to an undefined region", "momento {\n region us-east-1\n}",
			[]string{`region "us-east-1": no token configured`, "or define the region in the global momento options", "Caddyfile:5"}},
		{"breaker without regions of its own", "momento {\n breaker {\n failures 2\n }\n}",
			[]string{"at least one region", "Caddyfile:4"}},
		{"legacy token vs endpoint", "momento {\n region us-west-2 {\n endpoint https://api.cache.cell-1-eu-west-1-1.prod.a.momentohq.com\n token " + testLegacyToken + "\n }\n}",
			[]string{"(configured) disagrees with https://api.cache.cell-4-us-west-2-1.prod.a.momentohq.com", "Caddyfile:5"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cf := ":8080 {\n\tbind 127.0.0.1\n\troute {\n" + tc.block + "\n\t}\n}\n"
			_, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), map[string]any{"filename": "Caddyfile"})
			if err == nil {
				t.Fatalf("adapt accepted:\n%s", cf)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			for _, tok := range []string{testV1Token, testLegacyToken, "inner.jwt.key"} {
				if strings.Contains(err.Error(), tok) {
					t.Errorf("error reveals a token: %s", err)
				}
			}
		})
	}
}

// Errors that depend on placeholder values surface when the config loads,
// and still name the Caddyfile line of the region.
func TestLoadErrors(t *testing.T) {
	t.Setenv("MOMENTO_TEST_EMPTY", "")
	t.Setenv("MOMENTO_TEST_V1", testV1Token)
	t.Setenv("MOMENTO_TEST_V2", testV2Token)
	cases := []struct {
		name  string
		block string
		want  []string
	}{
		{"missing env var", "momento {\n region us-east-1 {\n token {env.MOMENTO_TEST_UNSET_VAR}\n }\n}",
			[]string{`region "us-east-1": token`, "{env.MOMENTO_TEST_UNSET_VAR} is empty", "at Caddyfile:8"}},
		{"empty env var", "momento {\n region us-east-1 {\n token {env.MOMENTO_TEST_EMPTY}\n }\n}",
			[]string{`region "us-east-1": token`, "{env.MOMENTO_TEST_EMPTY} is empty", "at Caddyfile:8"}},
		{"missing secret file", "momento {\n region us-east-1 {\n token {file./nonexistent/momento-token}\n }\n}",
			[]string{`region "us-east-1": token`, "at Caddyfile:8"}},
		{"v1 token for another region", "momento {\n region eu-west-1 {\n token {env.MOMENTO_TEST_V1}\n }\n}",
			[]string{`region "eu-west-1"`, "cell-1-eu-west-1-1", "disagrees with", "cell-4-us-west-2-1", "fingerprint", "at Caddyfile:8"}},
		{"v2 token, custom region, no endpoint", "momento {\n region edge {\n token {env.MOMENTO_TEST_V2}\n }\n}",
			[]string{`region "edge" is not one of Momento's regions`, "v2 token names no endpoint", "at Caddyfile:8"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := loadError(t, tc.block)
			if err == nil {
				t.Fatal("config loaded")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\ndoes not contain %q", err, w)
				}
			}
			for _, tok := range []string{testV1Token, testV2Token, "inner.jwt.key"} {
				if strings.Contains(err.Error(), tok) {
					t.Errorf("error reveals a token: %s", err)
				}
			}
		})
	}
}

// A v1 key names its endpoint: a custom-named region needs nothing else.
func TestV1TokenSuppliesEndpoint(t *testing.T) {
	t.Setenv("MOMENTO_TEST_V1", testV1Token)
	if err := loadError(t, "momento {\n region primary {\n token {env.MOMENTO_TEST_V1}\n }\n}"); err != nil {
		t.Fatalf("config with a v1 token and no endpoint refused: %v", err)
	}
}

// The token given by placeholder stays a placeholder in the adapted config.
func TestAdaptKeepsTokenPlaceholder(t *testing.T) {
	t.Setenv("MOMENTO_API_KEY", testV1Token)
	cfgJSON := adapt(t, ":8080 {\n\tmomento {\n\t\tregion us-west-2 {\n\t\t\ttoken {env.MOMENTO_API_KEY}\n\t\t}\n\t}\n}\n")
	if bytes.Contains(cfgJSON, []byte(testV1Token)) || bytes.Contains(cfgJSON, []byte("inner.jwt.key")) {
		t.Fatalf("adapted config contains the token: %s", cfgJSON)
	}
	if !bytes.Contains(cfgJSON, []byte("{env.MOMENTO_API_KEY}")) {
		t.Fatalf("adapted config lost the placeholder: %s", cfgJSON)
	}
}
