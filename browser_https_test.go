package momento

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/chromedp/chromedp"
)

// httpsPage is served by the gateway's own site: it sets, reads and
// publishes through the gateway from the same origin, as a page does, and
// reports the protocol the browser used.
const httpsPage = `<!doctype html><script>
async function run() {
  const out = [];
  const put = await fetch("/cache/c?key=from-browser&ttl_seconds=60", {method: "PUT", body: "hello over TLS"});
  out.push(put.status);
  const get = await fetch("/cache/c?key=from-browser");
  out.push(get.status, await get.text(), get.headers.get("content-type"));
  const pub = await fetch("/topics/c/t", {method: "POST", body: "published"});
  out.push(pub.status);
  const sub = await fetch("/topics/c/t");
  out.push(sub.status, (await sub.json()).items[0].item.value.text);
  out.push(performance.getEntriesByType("navigation")[0].nextHopProtocol);
  return JSON.stringify(out);
}
</script>`

// A real browser over HTTPS: Chromium loads a page from the gateway's site
// over HTTP/2 and uses the API from it.
func TestBrowserOverHTTPS(t *testing.T) {
	chromium := findChromium(t)
	up, _ := localUpstream(t, "t")
	g := startGatewayTLS(t, "h2", "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	if err := os.WriteFile(filepath.Join(g.root, "page.html"), []byte(httpsPage), 0o644); err != nil {
		t.Fatal(err)
	}
	// The page is served with Caddy's internal certificate, which this
	// browser does not trust: the test's own CA is all it would need.
	ctx := startBrowser(t, chromium, chromedp.Flag("ignore-certificate-errors", true))
	if err := chromedp.Do(ctx, chromedp.Navigate(g.base+"/page.html")); err != nil {
		t.Fatalf("browser: %v", err)
	}
	out, err := chromedp.Run(ctx, chromedp.Evaluate[string]("run()", chromedp.EvalAwaitPromise))
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	want := `[204,200,"hello over TLS","application/octet-stream",204,200,"published","h2"]`
	if out != want {
		t.Fatalf("the page saw %s, want %s", out, want)
	}
}
