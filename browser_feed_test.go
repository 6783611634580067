package momento

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/chromedp/chromedp"
)

// The demo page's live feed in a real browser: two pages follow one topic
// with EventSource (one upstream subscription for both); one of them
// reconnects while a message is published, and still shows every message,
// with no gap. The long-poll fallback still works.
func TestDemoFeedOnTwoPagesWithAReconnect(t *testing.T) {
	chromium := findChromium(t)
	up, _ := localUpstream(t, "local-dev-token")
	g := runCaddyfile(t, func(port int, logPath string) string {
		return fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n}\n:%d {\n\tbind 127.0.0.1\n\tmomento {\n%s\t}\n\tfile_server {\n\t\troot web\n\t}\n}\n",
			port, regionBlock("local", up.URL, "local-dev-token"))
	})
	browser := startBrowser(t, chromium)
	if err := chromedp.Do(browser); err != nil { // start it: the pages are its tabs
		t.Fatal(err)
	}
	openPage := func(hash string) context.Context {
		ctx, cancel := chromedp.NewContext(browser)
		t.Cleanup(cancel)
		if err := chromedp.Do(ctx, chromedp.Navigate(g.base+"/"+hash),
			chromedp.Poll[chromedp.Void](`document.querySelector("#feed-status").textContent.startsWith("Streaming") || document.querySelector("#feed-status").textContent.startsWith("Listening")`)); err != nil {
			t.Fatalf("page %s: %v", hash, err)
		}
		return ctx
	}
	a, b := openPage(""), openPage("")
	feedOf := func(ctx context.Context) string {
		text, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector("#feed").innerText`))
		if err != nil {
			t.Fatal(err)
		}
		return text
	}
	publish := func(msg string) {
		expect(t, g.do(http.MethodPost, "/topics/demo/news", strings.NewReader(msg), "Content-Type", "text/plain"), http.StatusNoContent, "")
	}
	waitFeed := func(ctx context.Context, msg string) {
		t.Helper()
		if err := chromedp.Do(ctx, chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.querySelector("#feed").innerText.includes(%q)`, msg))); err != nil {
			t.Fatalf("%q never reached the page: %v\nfeed:\n%s", msg, err, feedOf(ctx))
		}
	}
	mode, _ := chromedp.Run(a, chromedp.Evaluate[string](`feed.mode`))
	if mode != "events" {
		t.Fatalf("the page follows the topic with %q, want events", mode)
	}

	publish("first")
	waitFeed(a, "first")
	waitFeed(b, "first")

	// Page b loses its stream; meanwhile a message goes out.
	if err := chromedp.Do(b, chromedp.Evaluate[chromedp.Void](`feed.source.close()`)); err != nil {
		t.Fatal(err)
	}
	publish("while b was away")
	waitFeed(a, "while b was away")
	if err := chromedp.Do(b, chromedp.Evaluate[chromedp.Void](`reconnectFeed()`)); err != nil {
		t.Fatal(err)
	}
	waitFeed(b, "while b was away")
	publish("after")
	waitFeed(a, "after")
	waitFeed(b, "after")
	for name, ctx := range map[string]context.Context{"a": a, "b": b} {
		f := feedOf(ctx)
		if strings.Contains(f, "missed") || strings.Count(f, "first")+strings.Count(f, "while b was away")+strings.Count(f, "after") != 3 {
			t.Errorf("page %s shows:\n%s", name, f)
		}
	}
	if n := up.hits.Load(); n > 8 {
		t.Errorf("two pages and three messages made %d requests to the region; the hub shares one subscription", n)
	}

	// The long-poll fallback.
	c := openPage("#longpoll")
	publish("to the long poll")
	waitFeed(c, "to the long poll")
}
