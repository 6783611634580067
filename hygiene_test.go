package momento

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestTokenNeverLeaks drives every kind of answer through a gateway whose
// tokens come from the environment, then searches everything an outsider
// or an operator can read for the secrets: response headers and bodies,
// errors included; Caddy's log at debug level; `caddy adapt` output; and the
// admin API's /config/.
func TestTokenNeverLeaks(t *testing.T) {
	const localSecret = "local-secret-5f1c9a7e3b2d4f6a8c0e"
	t.Setenv("MOMENTO_TEST_KEY", testV1Token) // a v1 key for us-west-2: its own endpoint matches
	t.Setenv("MOMENTO_TEST_LOCAL", localSecret)
	secrets := []string{testV1Token, "inner.jwt.key", localSecret}

	up, _ := localUpstream(t, localSecret)
	f := &failing{status: 500}
	bad := newUpstream(t, f)
	adminPort := freePort(t)
	var cf string
	g := runCaddyfile(t, func(port int, logPath string) string {
		cf = globalOptions(fmt.Sprintf("127.0.0.1:%d", adminPort), logPath) + fmt.Sprintf(`:%d {
	bind 127.0.0.1
	log {
		output file %s
	}
	momento {
		region us-west-2 {
			token {env.MOMENTO_TEST_KEY}
		}
		region local {
			endpoint %s
			token {env.MOMENTO_TEST_LOCAL}
		}
		region bad {
			endpoint %s
			token {env.MOMENTO_TEST_LOCAL}
		}
		region refused {
			endpoint %s
			token {env.MOMENTO_TEST_LOCAL}
		}
		route local-* local
		route bad-* bad
		route refused-* refused
		default_region us-west-2
		timeout 300ms
		max_item_size 1KiB
		breaker {
			failures 2
		}
	}
}
`, port, logPath, up.URL, bad.URL, refusedURL(t))
		return cf
	})

	var seen strings.Builder
	record := func(r response) {
		for k, vs := range r.header {
			fmt.Fprintf(&seen, "%s: %s\n", k, strings.Join(vs, ", "))
		}
		seen.WriteString(r.body + "\n")
	}
	record(g.put("/cache/local-a?key=k&ttl_seconds=60", "v"))
	record(g.get("/cache/local-a?key=k"))
	record(g.get("/cache/local-a?key=missing"))
	record(g.get("/cache/local-a"))                                                                   // 400
	record(g.put("/cache/local-a?key=k&ttl_seconds=60", strings.Repeat("x", 2000)))                   // 413
	record(g.do(http.MethodPost, "/cache/local-a?key=k", nil))                                        // 405
	record(g.do(http.MethodGet, "/cache/local-a?key=k&token=client", nil, "Authorization", "client")) // stripped
	for i := 0; i < 3; i++ {
		record(g.get("/cache/bad-a?key=k"))     // 500, then 503 with Retry-After
		record(g.get("/cache/refused-a?key=k")) // 502, then 503
	}
	f.set(0)
	release := f.holdRequests()
	record(g.get("/cache/bad-b?key=k")) // still open: 503
	release()

	// Adapt output and the admin API's view of the running config.
	cfgJSON := adapt(t, cf)
	seen.Write(cfgJSON)
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/config/", adminPort))
	if err != nil {
		t.Fatal(err)
	}
	adminCfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(adminCfg), "{env.MOMENTO_TEST_KEY}") {
		t.Fatalf("admin /config/ answered %d: %s", resp.StatusCode, adminCfg)
	}
	seen.Write(adminCfg)

	logs := g.logs()
	if !strings.Contains(logs, `"token_kind":"v1"`) {
		t.Fatalf("provision log lacks the region facts; logs:\n%s", logs)
	}
	seen.WriteString(logs)

	all := seen.String()
	for _, s := range secrets {
		if i := strings.Index(all, s); i >= 0 {
			lo := max(0, i-200)
			t.Errorf("secret %q found in output:\n…%s…", s[:8], all[lo:min(len(all), i+len(s)+50)])
		}
	}
	if up.lastAuth.Load() != localSecret {
		t.Fatal("the region did not receive the server's token")
	}
}

// Any token written literally into the config is warned about, unless it
// goes to a backend on this machine (the embedded backend's own token).
func TestLiteralTokensAreWarnedAbout(t *testing.T) {
	const warning = "a token is written into the config itself"
	g := startGateway(t, "\tmomento {\n"+regionBlock("remote", "https://momento.example.invalid", "opaque-literal-token")+
		regionBlock("local", "http://127.0.0.1:9", "local-dev-token")+"\t\tdefault_region local\n\t}")
	var remote, local bool
	for _, line := range strings.Split(g.logs(), "\n") {
		if strings.Contains(line, warning) {
			remote = remote || strings.Contains(line, `"region":"remote"`)
			local = local || strings.Contains(line, `"region":"local"`)
		}
		// (Caddy's own debug log shows a literal token with the config it
		// loads: the very reason for the warning.)
		if strings.Contains(line, `"logger":"momento`) && strings.Contains(line, "opaque-literal-token") {
			t.Fatalf("a log line of the gateway shows the token: %s", line)
		}
	}
	if !remote || local {
		t.Fatalf("warned for the remote region: %v (want true), for the loopback one: %v (want false)", remote, local)
	}
}
