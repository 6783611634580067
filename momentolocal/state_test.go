package momentolocal

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/momento-gateway/caddy-momento/internal/reloadretry"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	// The metrics handler, to read the config's registry as Prometheus does.
	_ "github.com/caddyserver/caddy/v2/modules/metrics"
)

// This file tests what a backend keeps across config reloads, through a
// real Caddy loaded in this process from Caddyfiles, as `caddy reload`
// does, listening on loopback.

// caddyRun is a Caddy running in this process.
type caddyRun struct {
	t      *testing.T
	client *http.Client
}

// startCaddy loads a first config; the test stops Caddy when it ends.
func startCaddy(t *testing.T, caddyfile string) *caddyRun {
	t.Helper()
	c := &caddyRun{t: t, client: &http.Client{Timeout: 30 * time.Second, Transport: reloadretry.Transport{Next: http.DefaultTransport}}}
	c.load(caddyfile)
	t.Cleanup(func() {
		_ = caddy.Stop()
		c.client.CloseIdleConnections()
	})
	return c
}

// load adapts a Caddyfile and loads it in place of the running config, as
// `caddy reload` does.
func (c *caddyRun) load(caddyfile string) {
	c.t.Helper()
	if err := c.tryLoad(caddyfile); err != nil {
		c.t.Fatalf("loading config: %v\n%s", err, caddyfile)
	}
	// The old config's server closes its keep-alive connections.
	c.client.CloseIdleConnections()
}

func (c *caddyRun) tryLoad(caddyfile string) error {
	global := "{\n\tadmin off\n\tpersist_config off\n\tlog {\n\t\toutput discard\n\t}\n}\n"
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(global+caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		return err
	}
	return caddy.Load(cfg, true)
}

func (c *caddyRun) do(method, url string, body io.Reader, header map[string]string) response {
	c.t.Helper()
	r, err := fetch(context.Background(), c.client, method, url, body, header)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, url, err)
	}
	return r
}

func (c *caddyRun) expect(what string, r response, status int, body string) {
	c.t.Helper()
	if r.status != status || (body != "-" && r.body != body) {
		c.t.Fatalf("%s: got %d %q, want %d %q", what, r.status, r.body, status, body)
	}
}

// entries decodes a subscribe answer, which must be a 200.
func (c *caddyRun) entries(what string, r response) []part {
	c.t.Helper()
	if r.status != http.StatusOK {
		c.t.Fatalf("%s: got %d %q, want 200", what, r.status, r.body)
	}
	e, err := decodeAnswer(r.body)
	if err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
	return e
}

// site is a Caddyfile site on a free loopback port with one momento_local,
// configured by the given subdirectives; base is its URL.
func site(t *testing.T, subdirectives string) (caddyfile, base string) {
	t.Helper()
	port := freePort(t)
	return fmt.Sprintf("http://127.0.0.1:%d {\n\tbind 127.0.0.1\n\thandle /metrics {\n\t\tmetrics\n\t}\n\tmomento_local {\n%s\n\t}\n}\n", port, subdirectives),
		fmt.Sprintf("http://127.0.0.1:%d", port)
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// kept returns the state kept under name, or nil.
func kept(name string) *state {
	var s *state
	backends.Range(func(k, v any) bool {
		if k == name {
			s = v.(*state)
		}
		return s == nil
	})
	return s
}

// waitingOn lets the test know when a subscriber starts waiting on the
// backend kept under name.
func waitingOn(t *testing.T, name string) <-chan struct{} {
	t.Helper()
	s := kept(name)
	if s == nil {
		t.Fatalf("no backend %q is kept", name)
	}
	waits := make(chan struct{}, 16)
	s.topics.mu.Lock()
	s.topics.onWait = func() { waits <- struct{}{} }
	s.topics.mu.Unlock()
	return waits
}

func await(t *testing.T, what string, ch <-chan struct{}) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not within 10s", what)
	}
}

func TestReloadKeepsItemsAndMessages(t *testing.T) {
	cf, base := site(t, "\t\tname keep\n\t\ttoken t")
	c := startCaddy(t, cf)
	auth := map[string]string{"Authorization": "t"}
	text := map[string]string{"Authorization": "t", "Content-Type": "text/plain"}
	c.expect("put", c.do("PUT", base+"/cache/c?key=k&ttl_seconds=600", strings.NewReader("kept"), auth), 204, "")
	c.expect("publish 0", c.do("POST", base+"/topics/c/t", strings.NewReader("m0"), text), 204, "")
	c.expect("publish 1", c.do("POST", base+"/topics/c/t", strings.NewReader("m1"), text), 204, "")
	page := c.entries("subscribe", c.do("GET", base+"/topics/c/t?sequence_number=0", nil, auth))[0].Page

	// A subscriber waits for message 2 through the first config.
	waits := waitingOn(t, "keep")
	waiting := make(chan response, 1)
	go func() {
		r, _ := fetch(context.Background(), c.client, "GET", fmt.Sprintf("%s/topics/c/t?sequence_number=2&sequence_page=%d", base, page), nil, auth)
		waiting <- r
	}()
	await(t, "the subscriber waits", waits)

	// A reload with other settings; the first config's handler is cleaned
	// up before Load returns.
	c.load(strings.Replace(cf, "token t", "token t\n\t\tmax_message_size 8KiB", 1))

	r := <-waiting
	c.expect("subscriber waiting across the reload", r, 200, `{"items":[]}`)
	c.expect("item after the reload", c.do("GET", base+"/cache/c?key=k", nil, auth), 200, "kept")
	got := c.entries("messages after the reload", c.do("GET", base+"/topics/c/t?sequence_number=0", nil, auth))
	if fmt.Sprint(got) != fmt.Sprint([]part{textItem(0, page, "m0"), textItem(1, page, "m1")}) {
		t.Fatalf("messages after the reload: %+v; want m0, m1 on page %d", got, page)
	}

	// The released subscriber polls again with its cursor and gets the
	// next message, on the same page: nothing lost, no discontinuity.
	go func() {
		r, _ := fetch(context.Background(), c.client, "GET", fmt.Sprintf("%s/topics/c/t?sequence_number=2&sequence_page=%d", base, page), nil, auth)
		waiting <- r
	}()
	await(t, "the subscriber waits again", waits)
	c.expect("publish 2", c.do("POST", base+"/topics/c/t", strings.NewReader("m2"), text), 204, "")
	got = c.entries("next message", <-waiting)
	if fmt.Sprint(got) != fmt.Sprint([]part{textItem(2, page, "m2")}) {
		t.Fatalf("after polling again: %+v; want m2 on page %d", got, page)
	}
}

func TestReloadAppliesSettingsToKeptData(t *testing.T) {
	cf, base := site(t, "\t\tname settings\n\t\tcaches a b\n\t\ttopic_buffer 4\n\t\tmax_item_size 1KiB")
	c := startCaddy(t, cf)
	put := func(what, target, value string) {
		t.Helper()
		c.expect(what, c.do("PUT", base+target, strings.NewReader(value), nil), 204, "")
	}
	put("a", "/cache/a?key=k&ttl_seconds=600", "in a")
	put("b", "/cache/b?key=k&ttl_seconds=600", "in b")
	put("large", "/cache/a?key=large&ttl_seconds=600", strings.Repeat("v", 600))
	for i := range 4 {
		c.expect("publish", c.do("POST", base+"/topics/a/t", strings.NewReader(fmt.Sprint(i)), nil), 204, "")
		c.expect("publish", c.do("POST", base+"/topics/b/t", strings.NewReader(fmt.Sprint(i)), nil), 204, "")
	}

	// Cache b leaves the list; topics keep 2 messages; items up to 512
	// bytes.
	c.load(strings.NewReplacer("caches a b", "caches a", "topic_buffer 4", "topic_buffer 2", "1KiB", "512").Replace(cf))
	c.expect("a", c.do("GET", base+"/cache/a?key=k", nil, nil), 200, "in a")
	c.expect("b, off the list", c.do("GET", base+"/cache/b?key=k", nil, nil), 404, "Cache Not Found")
	c.expect("large, over the new max_item_size", c.do("GET", base+"/cache/a?key=large", nil, nil), 404, "Key Not Found")
	got := c.entries("topic", c.do("GET", base+"/topics/a/t?sequence_number=0", nil, nil))
	if len(got) != 3 || !got[0].Disc || got[0].Seq != 2 || got[1].Value != "2" || got[2].Value != "3" {
		t.Errorf("topic after topic_buffer 2: %+v; want a discontinuity to 2, then 2 and 3", got)
	}

	// Cache b back on the list: its items and topics went with it, as a
	// cache deleted and created again at Momento.
	c.load(cf)
	c.expect("b, back on the list", c.do("GET", base+"/cache/b?key=k", nil, nil), 404, "Key Not Found")
	got = c.entries("b's topic", c.do("GET", base+"/topics/b/t?sequence_number=4", nil, nil))
	if len(got) != 1 || !got[0].Disc || got[0].Seq != 0 {
		t.Errorf("b's topic, back on the list: %+v; want only a discontinuity to 0 (a new topic)", got)
	}

	// A smaller max_memory evicts the least recently used items.
	for i := range 10 {
		put("fill", fmt.Sprintf("/cache/a?key=f%d&ttl_seconds=600", i), strings.Repeat("x", 1000-len("f0")))
	}
	before := kept("settings").store.len()
	c.load(strings.Replace(cf, "max_item_size 1KiB", "max_item_size 1KiB\n\t\tmax_memory 4KiB", 1))
	c.expect("f9, the most recent", c.do("GET", base+"/cache/a?key=f9", nil, nil), 200, "-")
	s := kept("settings")
	if n := s.store.len(); n >= before || n == 0 {
		t.Errorf("after max_memory 4KiB: %d items (before %d); want fewer, not none", n, before)
	}
	if m := s.store.memory(); m > 4096 {
		t.Errorf("after max_memory 4KiB: memory %d", m)
	}
	c.expect("f0, the least recent", c.do("GET", base+"/cache/a?key=f0", nil, nil), 404, "Key Not Found")
}

// TestFailedReloadChangesNothing loads a config whose momento_local would
// evict, but which fails to start: the running config's data stays.
func TestFailedReloadChangesNothing(t *testing.T) {
	cf, base := site(t, "\t\tname failed")
	c := startCaddy(t, cf)
	c.expect("put", c.do("PUT", base+"/cache/c?key=k&ttl_seconds=600", strings.NewReader(strings.Repeat("v", 4000)), nil), 204, "")

	// The second site's listener is taken, so the config provisions (and
	// takes over the backend) but cannot start.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	bad := strings.Replace(cf, "name failed", "name failed\n\t\tmax_item_size 1KiB\n\t\tmax_memory 2KiB", 1) +
		fmt.Sprintf("http://%s {\n\tbind 127.0.0.1\n\trespond 200\n}\n", taken.Addr())
	if err := c.tryLoad(bad); err == nil {
		t.Fatal("the config with a taken port loaded")
	}
	c.expect("after the failed reload", c.do("GET", base+"/cache/c?key=k", nil, nil), 200, strings.Repeat("v", 4000))
	s := kept("failed")
	s.mu.Lock()
	got := s.settings.maxMemory
	s.mu.Unlock()
	if got != DefaultMaxMemory {
		t.Errorf("max_memory in force %d, want the running config's %d", got, DefaultMaxMemory)
	}
}

func TestBackendLeavingTheConfigIsFreed(t *testing.T) {
	cf, base := site(t, "\t\tname leaving")
	c := startCaddy(t, cf)
	value := strings.Repeat("v", 1<<20)
	before := liveHeap()
	for i := range 32 {
		c.expect("put", c.do("PUT", fmt.Sprintf("%s/cache/c?key=k%d&ttl_seconds=600", base, i), strings.NewReader(value), nil), 204, "")
	}
	c.expect("publish", c.do("POST", base+"/topics/c/t", strings.NewReader("m"), nil), 204, "")
	full := liveHeap()
	if full-before < 30<<20 {
		t.Fatalf("32 MiB stored, but the heap grew by %d bytes", full-before)
	}

	// The same site, with a backend of another name.
	other := strings.Replace(cf, "name leaving", "name arriving", 1)
	c.load(other)
	if kept("leaving") != nil {
		t.Fatal("the backend that left the config is still kept")
	}
	if freed := full - liveHeap(); freed < 30<<20 {
		t.Errorf("the backend left the config, but only %d bytes of the 32 MiB were freed", freed)
	}
	c.expect("the new backend starts empty", c.do("GET", base+"/cache/c?key=k0", nil, nil), 404, "Key Not Found")

	// Back under the old name: a new, empty backend.
	c.load(cf)
	c.expect("the old name, back", c.do("GET", base+"/cache/c?key=k0", nil, nil), 404, "Key Not Found")
}

func TestBackendNames(t *testing.T) {
	cfA, baseA := site(t, "\t\tname a")
	cfB, baseB := site(t, "\t\tname b")
	cfA2, baseA2 := site(t, "\t\tname a")
	c := startCaddy(t, cfA+cfB+cfA2)

	c.expect("put a", c.do("PUT", baseA+"/cache/c?key=k&ttl_seconds=600", strings.NewReader("in a"), nil), 204, "")
	c.expect("b is another backend", c.do("GET", baseB+"/cache/c?key=k", nil, nil), 404, "Key Not Found")
	c.expect("a on another site is the same backend", c.do("GET", baseA2+"/cache/c?key=k", nil, nil), 200, "in a")

	// One name, two settings, in one config: refused, naming the fix.
	conflict := cfA + strings.Replace(cfA2, "name a", "name a\n\t\tmax_memory 64MiB", 1)
	if err := c.tryLoad(conflict); err == nil || !strings.Contains(err.Error(), `momento_local "a" appears twice in this config with different settings`) {
		t.Errorf("one name with two settings: got %v", err)
	}
	c.expect("a after the refused config", c.do("GET", baseA+"/cache/c?key=k", nil, nil), 200, "in a")

	// An unnamed backend is "default".
	cfD, baseD := site(t, "")
	c.load(cfD)
	c.expect("put default", c.do("PUT", baseD+"/cache/c?key=k&ttl_seconds=600", strings.NewReader("d"), nil), 204, "")
	if s := kept(DefaultName); s == nil || s.store.len() != 1 {
		t.Errorf("no backend kept under %q holding the item", DefaultName)
	}
}

// TestMetricsAcrossReloads reads the config's metrics after reloads: each
// config has a fresh registry, and the kept data counts once.
func TestMetricsAcrossReloads(t *testing.T) {
	cf, base := site(t, "\t\tname metered")
	c := startCaddy(t, cf)
	c.expect("put", c.do("PUT", base+"/cache/c?key=ab&ttl_seconds=600", strings.NewReader("123"), nil), 204, "")
	for i := range 2 {
		c.load(strings.Replace(cf, "name metered", fmt.Sprintf("name metered\n\t\ttopic_buffer %d", 10+i), 1))
		m := c.do("GET", base+"/metrics", nil, nil)
		if got := metric(t, m.body, "caddy_momento_local_items"); got != 1 {
			t.Errorf("reload %d: caddy_momento_local_items %v, want 1", i, got)
		}
		if got := metric(t, m.body, "caddy_momento_local_bytes"); got != 5 {
			t.Errorf("reload %d: caddy_momento_local_bytes %v, want 5", i, got)
		}
		if got := metric(t, m.body, "caddy_momento_local_memory_bytes"); got != float64(2+8+itemOverhead) {
			t.Errorf("reload %d: caddy_momento_local_memory_bytes %v, want %d", i, got, 2+8+itemOverhead)
		}
	}
}

// metric returns the value of an unlabelled sample in an exposition.
func metric(t *testing.T, exposition, name string) float64 {
	t.Helper()
	m := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(name) + ` (\S+)$`).FindStringSubmatch(exposition)
	if m == nil {
		t.Fatalf("no %s in\n%s", name, exposition)
	}
	v, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}
