package momento

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/momento-gateway/caddy-momento/momentolocal"
)

// browserSecret is the region token in these tests: it must appear nowhere
// a page can read.
const browserSecret = "browser-secret-0d9e8c7b6a5f4e3d2c1b"

// readmeBrowserCaddyfile returns the README's "Serving browsers safely"
// Caddyfile, verbatim between its markers.
func readmeBrowserCaddyfile(t *testing.T) string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)<!-- browser-caddyfile -->\\s*```caddyfile\\n(.*?)```\\s*<!-- /browser-caddyfile -->").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README.md has no browser-caddyfile block")
	}
	return string(m[1])
}

type browserSetup struct {
	g          *gateway
	publicBase string // a read-only gateway for anonymous pages
	up         *upstream
	store      *momentolocal.Handler
}

// startReadmeBrowserGateway loads the README's Caddyfile with only its
// addresses swapped for loopback ones: the site address, the page origin,
// and the region's endpoint (the embedded backend instead of Momento). A
// second, read-only site for anonymous pages is appended beside it.
func startReadmeBrowserGateway(t *testing.T, pageOrigin string) *browserSetup {
	t.Helper()
	t.Setenv("MOMENTO_API_KEY", browserSecret)
	up, store := localUpstream(t, browserSecret)
	site := readmeBrowserCaddyfile(t)
	publicPort := freePort(t)
	bs := &browserSetup{up: up, store: store, publicBase: fmt.Sprintf("http://127.0.0.1:%d", publicPort)}
	bs.g = runCaddyfile(t, func(port int, logPath string) string {
		for old, repl := range map[string]string{
			"cache.example.com {":     fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1", port),
			"https://app.example.com": pageOrigin,
			"region us-east-1 {":      "region us-east-1 {\n\t\t\tendpoint " + up.URL,
		} {
			if !strings.Contains(site, old) {
				t.Fatalf("README Caddyfile no longer contains %q", old)
			}
			site = strings.Replace(site, old, repl, 1)
		}
		return globalOptions("off", logPath) + fmt.Sprintf(`%s
http://127.0.0.1:%d {
	bind 127.0.0.1
	momento {
		region us-east-1 {
			endpoint %s
			token {env.MOMENTO_API_KEY}
		}
		key_prefix public:
		allow {
			caches user-data
			ops get
		}
		cors {
			origins %s
		}
	}
}
`, site, publicPort, up.URL, pageOrigin)
	})
	return bs
}

// TestReadmeBrowserCaddyfile checks the README's browser Caddyfile over
// plain HTTP, so it runs even where no browser is installed.
func TestReadmeBrowserCaddyfile(t *testing.T) {
	const origin = "https://app.example.com"
	bs := startReadmeBrowserGateway(t, origin)
	g := bs.g
	as := func(user, method, target, body string) response {
		var r response
		if body == "" {
			r = g.do(method, target, nil, "Authorization", basicAuth(user), "Origin", origin)
		} else {
			r = g.do(method, target, strings.NewReader(body), "Authorization", basicAuth(user), "Origin", origin)
		}
		if r.header.Get("Access-Control-Allow-Origin") != origin {
			t.Errorf("%s %s: Access-Control-Allow-Origin %q", method, target, r.header.Get("Access-Control-Allow-Origin"))
		}
		return r
	}
	expect(t, as("alice", "PUT", "/cache/user-data?key=cart&ttl_seconds=600", "3 apples"), 204, "")
	expect(t, as("bob", "PUT", "/cache/user-data?key=cart&ttl_seconds=600", "2 pears"), 204, "")
	expect(t, as("alice", "GET", "/cache/user-data?key=cart", ""), 200, "3 apples")
	expect(t, as("bob", "GET", "/cache/user-data?key=cart", ""), 200, "2 pears")
	expect(t, as("alice", "GET", "/cache/other?key=cart", ""), 403, `cache "other" is not allowed here`)
	expect(t, as("alice", "PUT", "/cache/user-data?key=cart&ttl_seconds=7200", "x"), 400, "exceeds max_ttl (3600 seconds)")
	expect(t, as("alice", "DELETE", "/cache/user-data?key=cart", ""), 204, "")
	expect(t, as("alice", "GET", "/cache/user-data?key=cart", ""), 404, "Key Not Found")

	// No credentials: basic_auth answers 401 before the gateway.
	expect(t, g.get("/cache/user-data?key=cart"), 401, "")
	// A preflight passes basic_auth and is answered by the gateway.
	r := g.do(http.MethodOptions, "/cache/user-data?key=cart", nil, "Origin", origin, "Access-Control-Request-Method", "PUT",
		"Access-Control-Request-Headers", "authorization")
	expect(t, r, 204, "")
	if r.header.Get("Access-Control-Allow-Methods") != "GET, PUT, DELETE" || r.header.Get("Access-Control-Max-Age") != "600" {
		t.Errorf("preflight headers %v", r.header)
	}
	expect(t, g.do(http.MethodOptions, "/cache/user-data?key=cart", nil, "Origin", "https://elsewhere.example",
		"Access-Control-Request-Method", "GET"), 403, "origin https://elsewhere.example is not allowed")
	if n := bs.up.hits.Load(); n != 6 {
		t.Errorf("the region saw %d requests, want 6 (refusals never reach it)", n)
	}
}

// findChromium returns a browser to drive. The browser tests run only
// when MOMENTO_BROWSER_TESTS=1 (as .ci/run sets): they take seconds each,
// and a plain `go test ./...` stays quick. Then a missing browser is a
// failure.
func findChromium(t *testing.T) string {
	t.Helper()
	if os.Getenv("MOMENTO_BROWSER_TESTS") != "1" {
		t.Skip("browser tests run with MOMENTO_BROWSER_TESTS=1 (and Chromium installed), as .ci/run does")
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatal("MOMENTO_BROWSER_TESTS=1 but no Chromium found (apt-get install chromium)")
	return ""
}

// startBrowser starts headless Chromium for the test, with the flags this
// closed network needs (no background connections to Google's services).
func startBrowser(t *testing.T, chromium string, extra ...chromedp.ExecAllocatorOption) context.Context {
	t.Helper()
	opts := append(append(chromedp.DefaultExecAllocatorOptions[:], extra...),
		chromedp.ExecPath(chromium),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	ctx, cancelTimeout := context.WithTimeout(ctx, 90*time.Second)
	t.Cleanup(func() { cancelTimeout(); cancel(); cancelAlloc() })
	return ctx
}

// TestDemoPage opens the demo page that Caddyfile.example serves, as a new
// user does, and runs its put-then-get demo through the gateway.
func TestDemoPage(t *testing.T) {
	chromium := findChromium(t)
	up, _ := localUpstream(t, "local-dev-token")
	g := runCaddyfile(t, func(port int, logPath string) string {
		return fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tbind 127.0.0.1\n\tmomento {\n%s\t}\n\tfile_server {\n\t\troot web\n\t}\n}\n",
			port, regionBlock("local", up.URL, "local-dev-token"))
	})
	ctx := startBrowser(t, chromium)
	if err := chromedp.Do(ctx, chromedp.Navigate(g.base+"/#run=put,get,delete,get")); err != nil {
		t.Fatal(err)
	}
	// The page runs put, get, delete, get; the last answer is a miss.
	if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](`document.querySelectorAll("#history li").length === 4`)); err != nil {
		t.Fatalf("the demo did not make its four calls: %v", err)
	}
	history, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#history").innerText`))
	if err != nil {
		t.Fatal(err)
	}
	status, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#result-status").textContent`))
	if err != nil {
		t.Fatal(err)
	}
	body, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#result-body").textContent`))
	if err != nil {
		t.Fatal(err)
	}
	if status != "404" || body != "Key Not Found" {
		t.Fatalf("last result %q %q; want 404 Key Not Found. History:\n%s", status, body, history)
	}
	for _, want := range []string{"204", "200", "404"} {
		if !strings.Contains(history, want) {
			t.Errorf("history lacks a %s:\n%s", want, history)
		}
	}

	// The live feed: the page subscribed on load; a publish shows up in it.
	if err := chromedp.Do(ctx,
		chromedp.SetValue(chromedp.CSS("#message"), "live from the browser test"),
		clickJS("#publish"),
		chromedp.Poll[chromedp.Void](`document.querySelector("#feed").innerText.includes("live from the browser test")`),
	); err != nil {
		feedStatus, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#feed-status").textContent`))
		t.Fatalf("the published message never reached the page's feed: %v (feed status: %s)", err, feedStatus)
	}
	first, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#feed li").innerText`))
	if err != nil || !strings.Contains(first, "#0") {
		t.Errorf("first feed entry %q, want sequence #0 (%v)", first, err)
	}

	// Names a browser cannot send as one path segment: it resolves "/cache/.."
	// to "/" and would show the page's own HTML as a value. The page refuses
	// them itself, and the next good name works again.
	lastCall := func(field, name, button string) (status, text, body string) {
		t.Helper()
		if err := chromedp.Do(ctx,
			chromedp.Evaluate[chromedp.Void](`document.querySelector("#result-status-text").textContent = ""`),
			chromedp.SetValue(chromedp.CSS(field), name),
			clickJS(button),
			chromedp.Poll[chromedp.Void](`document.querySelector("#result-status-text").textContent !== ""`),
		); err != nil {
			t.Fatalf("%s %q, %s: %v", field, name, button, err)
		}
		result, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](
			`["#result-status", "#result-status-text", "#result-body"].map((id) => document.querySelector(id).textContent)`))
		if err != nil || len(result) != 3 {
			t.Fatalf("%s %q, %s: reading the result: %v %q", field, name, button, err, result)
		}
		return result[0], result[1], result[2]
	}
	for _, c := range []struct{ field, name, button, want string }{
		{"#cache-name", "..", "#get", `Cache name ".." cannot be used: a browser reads ".." in a URL path as the folder above`},
		{"#cache-name", ".", "#put", `Cache name "." cannot be used: a browser reads "." in a URL path as the current folder`},
		{"#cache-name", "a/b", "#delete", `Cache name "a/b" cannot be used: a name cannot contain "/"`},
		{"#topic", "..", "#publish", `Topic ".." cannot be used`},
	} {
		status, text, body := lastCall(c.field, c.name, c.button)
		if status != "" || text != "Not sent" || !strings.Contains(body, c.want) {
			t.Errorf("%s %q, %s: page shows %q %q %q; want Not sent and %q", c.field, c.name, c.button, status, text, body, c.want)
		}
	}
	// A refused topic name stops the feed, with the same reason.
	if err := chromedp.Do(ctx, chromedp.Evaluate[chromedp.Void](`document.querySelector("#topic").dispatchEvent(new Event("change"))`),
		chromedp.Poll[chromedp.Void](`document.querySelector("#feed-status").textContent.startsWith("Not subscribed. Topic \"..\" cannot be used")`),
	); err != nil {
		feedStatus, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#feed-status").textContent`))
		t.Errorf("feed on topic \"..\": %v (feed status: %s)", err, feedStatus)
	}
	if status, _, body := lastCall("#cache-name", "demo", "#get"); status != "404" || body != "Key Not Found" {
		t.Errorf("after a refused name, a get on demo shows %q %q; want 404 Key Not Found", status, body)
	}
	invalid, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`document.querySelector("#cache-name").hasAttribute("aria-invalid")`))
	if err != nil || invalid {
		t.Errorf("the cache name field is still marked invalid (%v)", err)
	}
}

// browserPage is served from its own origin and calls the gateways with
// fetch. run() returns what the page could read of every answer.
const browserPage = `<!doctype html><meta charset="utf-8"><title>gateway browser test</title>
<script>
async function call(base, method, path, user, body) {
  const headers = {};
  if (user) headers["Authorization"] = "Basic " + btoa(user + ":" + user + "-password");
  try {
    const r = await fetch(base + path, {method, headers, body});
    const seen = [];
    r.headers.forEach((v, k) => seen.push(k + ": " + v));
    return {method, path, user, status: r.status, body: await r.text(), headers: seen};
  } catch (e) {
    return {method, path, user, status: 0, body: "fetch failed: " + e.name, headers: []};
  }
}
async function run(gw, pub) {
  const out = [];
  const k = "/cache/user-data?key=cart";
  out.push(await call(gw, "PUT", k + "&ttl_seconds=600", "alice", "alice's cart"));
  out.push(await call(gw, "PUT", k + "&ttl_seconds=600", "bob", "bob's cart"));
  out.push(await call(gw, "GET", k, "alice"));
  out.push(await call(gw, "GET", k, "bob"));
  out.push(await call(gw, "GET", "/cache/secrets?key=x", "alice"));
  out.push(await call(gw, "DELETE", k, "alice"));
  out.push(await call(gw, "GET", k, "alice"));
  out.push(await call(gw, "GET", k, "bob"));
  out.push(await call(pub, "GET", "/cache/user-data?key=bob%3Acart"));
  out.push(await call(pub, "DELETE", "/cache/user-data?key=bob%3Acart"));
  const everything = JSON.stringify(out) + document.documentElement.outerHTML + document.cookie +
    JSON.stringify(Object.assign({}, localStorage)) + JSON.stringify(performance.getEntries().map(e => e.name));
  return JSON.stringify({results: out, everything});
}
</script>`

type pageResult struct {
	Method, Path, User, Body string
	Status                   int
	Headers                  []string
}

// TestBrowserEndToEnd runs headless Chromium: a page on one origin calls
// the README's gateway on another with fetch.
func TestBrowserEndToEnd(t *testing.T) {
	chromium := findChromium(t)

	page := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(browserPage))
	}))
	t.Cleanup(page.Close)
	bs := startReadmeBrowserGateway(t, page.URL)

	// A refused origin: a page the gateway does not list (same host, other port).
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(browserPage))
	}))
	t.Cleanup(other.Close)

	ctx := startBrowser(t, chromium)

	runPage := func(url string) string {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Navigate(url)); err != nil {
			t.Fatalf("browser: %v", err)
		}
		raw, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf("run(%q, %q)", bs.g.base, bs.publicBase), chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("browser: %v", err)
		}
		return raw
	}
	raw := runPage(page.URL)
	var got struct {
		Results    []pageResult
		Everything string
	}
	if err := json.Unmarshal([]byte(raw), &got); err != nil {
		t.Fatalf("page output %q: %v", raw, err)
	}
	want := []struct {
		status int
		body   string
	}{
		{204, ""}, {204, ""}, // put as alice, as bob: same key
		{200, "alice's cart"}, {200, "bob's cart"}, // per-user prefix: different values
		{403, `cache "secrets" is not allowed here`}, // refused by allow, and readable by the page
		{204, ""}, {404, "Key Not Found"}, {200, "bob's cart"}, // delete is alice's only
		{404, "Key Not Found"},         // the read-only site, anonymous: its own namespace, not bob's
		{0, "fetch failed: TypeError"}, // delete refused at the preflight: not an allowed method there
	}
	if len(got.Results) != len(want) {
		t.Fatalf("page made %d calls: %+v", len(got.Results), got.Results)
	}
	for i, w := range want {
		r := got.Results[i]
		if r.Status != w.status || !strings.Contains(r.Body, w.body) {
			t.Errorf("call %d %s %s as %q: page saw %d %q; want %d %q", i, r.Method, r.Path, r.User, r.Status, r.Body, w.status, w.body)
		}
	}
	for _, r := range got.Results {
		t.Logf("page: %s %s as %q -> %d %q", r.Method, r.Path, r.User, r.Status, r.Body)
	}
	if strings.Contains(got.Everything, browserSecret) {
		t.Fatal("the token is readable by the page")
	}
	upstreamBefore := bs.up.hits.Load()

	// A page on an unlisted origin: its preflight is refused, nothing reaches the region.
	var refused string
	raw = runPage(other.URL)
	if err := json.Unmarshal([]byte(raw), &got); err != nil {
		t.Fatal(err)
	}
	for _, r := range got.Results {
		if r.Status != 0 {
			refused += fmt.Sprintf("%s %s -> %d; ", r.Method, r.Path, r.Status)
		}
	}
	if refused != "" {
		t.Errorf("a page on an unlisted origin could read answers: %s", refused)
	}
	if n := bs.up.hits.Load(); n != upstreamBefore {
		t.Errorf("requests from an unlisted origin reached the region (%d)", n-upstreamBefore)
	}
}

// clickJS clicks an element from the page's own script. A click at the
// element's position (chromedp.Click) can miss while the page is still
// scrolling smoothly to the last result (revealResult), and the test then
// waits for an answer to a click that never landed (seen once in CI, on a
// slow run).
func clickJS(selector string) chromedp.Action[chromedp.Void] {
	return chromedp.Evaluate[chromedp.Void](fmt.Sprintf("document.querySelector(%q).click()", selector))
}
