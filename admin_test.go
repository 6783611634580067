package momento

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/momento-gateway/caddy-momento/internal/reloadretry"
)

// opsGateway runs a gateway with Caddy's admin endpoint on a loopback port
// (for /metrics, /load and /momento/regions), from a Caddyfile site body.
type opsGateway struct {
	*gateway
	admin   string
	logPath string
	port    int
}

func startOpsGateway(t *testing.T, site string) *opsGateway {
	t.Helper()
	adminPort := freePort(t)
	og := &opsGateway{admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort)}
	og.gateway = runCaddyfile(t, func(port int, logPath string) string {
		og.port, og.logPath = port, logPath
		return og.caddyfile(site)
	})
	og.client.Transport = reloadretry.Transport{Next: http.DefaultTransport}
	return og
}

func (og *opsGateway) caddyfile(site string) string {
	return globalOptions(strings.TrimPrefix(og.admin, "http://"), og.logPath) +
		fmt.Sprintf(":%d {\n\tbind 127.0.0.1\n%s\n}\n", og.port, site)
}

// reload posts a new Caddyfile to the admin API's /load, as `caddy reload`
// does. must-revalidate makes Caddy apply it even if it is unchanged.
func (og *opsGateway) reload(t *testing.T, site string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, og.admin+"/load", strings.NewReader(og.caddyfile(site)))
	req.Header.Set("Content-Type", "text/caddyfile")
	req.Header.Set("Cache-Control", "must-revalidate")
	resp, err := adminClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("reload: %d %s", resp.StatusCode, b)
	}
	// The old config's server closes its keep-alive connections as it shuts
	// down: start the next requests on fresh ones.
	og.client.CloseIdleConnections()
}

// adminClient talks to Caddy's admin endpoint on fresh connections, since
// Caddy restarts its admin server on every load, and retries a request
// that meets the old one going away (loading the same config twice is
// harmless).
var adminClient = &http.Client{Transport: reloadretry.Transport{Next: &http.Transport{DisableKeepAlives: true}}}

func (og *opsGateway) adminGet(t *testing.T, path string) string {
	t.Helper()
	resp, err := adminClient.Get(og.admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %q", path, resp.StatusCode, b)
	}
	return string(b)
}

func (og *opsGateway) regions(t *testing.T) map[string]RegionStatus {
	t.Helper()
	var list []RegionStatus
	if err := json.Unmarshal([]byte(og.adminGet(t, "/momento/regions")), &list); err != nil {
		t.Fatal(err)
	}
	out := map[string]RegionStatus{}
	for _, r := range list {
		out[r.Name] = r
	}
	return out
}

// metric returns the value of one sample in a Prometheus text exposition,
// or -1 when it is absent.
func metric(exposition, name string, labels string) float64 {
	sample := name
	if labels != "" {
		sample += "{" + labels + "}"
	}
	re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(sample) + ` (\S+)$`)
	m := re.FindStringSubmatch(exposition)
	if m == nil {
		return -1
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

func TestMetricsAndAdminAPI(t *testing.T) {
	good, _ := localUpstream(t, "tok-good-1234567890")
	f := &failing{status: 500}
	bad := newUpstream(t, f)
	og := startOpsGateway(t, "\tmomento {\n"+
		regionBlock("ops-good", good.URL, "tok-good-1234567890")+regionBlock("ops-bad", bad.URL, "tok-bad")+
		"\t\troute bad-* ops-bad\n\t\tdefault_region ops-good\n\t\tbreaker {\n\t\t\tfailures 2\n\t\t\topen_for 1m\n\t\t}\n\t}")
	// Counters live as long as the process, across loads (as they do
	// across reloads): this test counts what it adds, so that it passes
	// again under -count=2.
	before := og.adminGet(t, "/metrics")

	expect(t, og.put("/cache/c?key=k&ttl_seconds=60", "v"), 204, "")
	for i := 0; i < 3; i++ {
		expect(t, og.get("/cache/c?key=k"), 200, "v")
	}
	expect(t, og.get("/cache/c?key=nope"), 404, "Key Not Found")
	expect(t, og.get("/cache/bad-1?key=k"), 500, "boom")
	expect(t, og.get("/cache/bad-1?key=k"), 500, "boom")
	expect(t, og.get("/cache/bad-1?key=k"), 503, "circuit breaker is open")
	expect(t, og.get("/cache/bad-1?key=k"), 503, "circuit breaker is open")

	m := og.adminGet(t, "/metrics")
	for _, c := range []struct {
		name, labels string
		want         float64 // what this test adds, or for a gauge (_state, _bytes, _per_second) its value
	}{
		{"caddy_momento_requests_total", `code="204",op="set",region="ops-good"`, 1},
		{"caddy_momento_requests_total", `code="200",op="get",region="ops-good"`, 3},
		{"caddy_momento_requests_total", `code="404",op="get",region="ops-good"`, 1},
		{"caddy_momento_requests_total", `code="500",op="get",region="ops-bad"`, 2},
		{"caddy_momento_requests_total", `code="503",op="get",region="ops-bad"`, 2},
		{"caddy_momento_upstream_duration_seconds_count", `op="get",region="ops-good"`, 4},
		{"caddy_momento_upstream_duration_seconds_count", `op="get",region="ops-bad"`, 2},
		{"caddy_momento_breaker_state", `region="ops-good"`, 0},
		{"caddy_momento_breaker_state", `region="ops-bad"`, 2},
		{"caddy_momento_breaker_rejections_total", `region="ops-bad"`, 2},
		{"caddy_momento_breaker_transitions_total", `region="ops-bad",to="open"`, 1},
		{"caddy_momento_reads_unshared_total", `region="ops-good"`, 0},
		{"caddy_momento_shared_calls_held_bytes", `region="ops-good"`, 0},
		// Never refused by the region: not metered.
		{"caddy_momento_budget_per_second", `kind="cache_operations",region="ops-good"`, 0},
		{"caddy_momento_budget_refused_total", `kind="publishes",region="ops-good"`, 0},
	} {
		got := metric(m, c.name, c.labels)
		if gauge := strings.HasSuffix(c.name, "_state") || strings.HasSuffix(c.name, "_bytes") || strings.HasSuffix(c.name, "_per_second"); !gauge && got >= 0 {
			got -= max(0, metric(before, c.name, c.labels))
		}
		if got != c.want {
			t.Errorf("%s{%s} = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// Cache names and keys never become label values.
	if strings.Contains(m, `"bad-1"`) || strings.Contains(m, `key=`) {
		t.Error("metrics carry a client-chosen cache name or key")
	}

	regions := og.regions(t)
	b := regions["ops-bad"]
	if b.State != "open" || b.RetryAfterSeconds < 59 || b.Counts.Failures != 0 || b.Endpoint != bad.URL ||
		b.TokenKind != TokenOpaque || len(b.TokenFingerprint) != 8 {
		t.Errorf("ops-bad: %+v", b)
	}
	g := regions["ops-good"]
	if g.State != "closed" || g.Counts.Requests != 5 || g.Counts.Successes != 5 || g.TokenFingerprint != parseToken("tok-good-1234567890").Fingerprint() {
		t.Errorf("ops-good: %+v", g)
	}
	if raw := og.adminGet(t, "/momento/regions"); strings.Contains(raw, "tok-good-1234567890") || strings.Contains(raw, "tok-bad") {
		t.Fatal("the admin API shows a token")
	}

	// Reset by hand: the region gets traffic again at once.
	resp, err := adminClient.Post(og.admin+"/momento/regions/ops-bad/reset", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	var after RegionStatus
	_ = json.NewDecoder(resp.Body).Decode(&after)
	resp.Body.Close()
	if resp.StatusCode != 200 || after.State != "closed" {
		t.Fatalf("reset: %d %+v", resp.StatusCode, after)
	}
	f.set(204)
	hits := bad.hits.Load()
	expect(t, og.do(http.MethodDelete, "/cache/bad-1?key=k", nil), 204, "")
	if bad.hits.Load() != hits+1 {
		t.Fatal("after a reset the region got no traffic")
	}
	resp, _ = adminClient.Post(og.admin+"/momento/regions/nowhere/reset", "", nil)
	resp.Body.Close()
	if resp.StatusCode != 404 {
		t.Errorf("reset of an unknown region: %d", resp.StatusCode)
	}
}

func TestBreakerStateSurvivesReload(t *testing.T) {
	f := &failing{status: 500}
	bad := newUpstream(t, f)
	other, _ := localUpstream(t, "t")
	site := func(endpoint, failures, timeout string) string {
		return "\tmomento {\n" + regionBlock("reload-r", endpoint, "t") +
			"\t\ttimeout " + timeout + "\n\t\tbreaker {\n\t\t\tfailures " + failures + "\n\t\t\topen_for 1m\n\t\t}\n\t}"
	}
	og := startOpsGateway(t, site(bad.URL, "2", "5s"))
	og.get("/cache/c?key=k")
	og.get("/cache/c?key=k")
	expect(t, og.get("/cache/c?key=k"), 503, "circuit breaker is open")

	// A reload that keeps the region's endpoint keeps its breaker, open.
	og.reload(t, site(bad.URL, "2", "6s"))
	hits := bad.hits.Load()
	expect(t, og.get("/cache/c?key=k"), 503, "circuit breaker is open")
	if bad.hits.Load() != hits {
		t.Fatal("after the reload the open breaker let a request through")
	}
	if r := og.regions(t)["reload-r"]; r.State != "open" {
		t.Fatalf("admin API after reload: %+v", r)
	}

	// New breaker settings take effect on the kept breaker: reset it, and
	// with failures 1 a single failure now opens it.
	og.reload(t, site(bad.URL, "1", "6s"))
	resp, _ := adminClient.Post(og.admin+"/momento/regions/reload-r/reset", "", nil)
	resp.Body.Close()
	expect(t, og.get("/cache/c?key=k"), 500, "boom")
	expect(t, og.get("/cache/c?key=k"), 503, "circuit breaker is open")

	// A reload that changes the endpoint starts the region fresh.
	og.reload(t, site(other.URL, "1", "6s"))
	expect(t, og.get("/cache/c?key=k"), 404, "Key Not Found")
	if r := og.regions(t)["reload-r"]; r.State != "closed" || r.Endpoint != other.URL {
		t.Fatalf("admin API after endpoint change: %+v", r)
	}
}

func TestPlaceholdersRegionHeaderAndDebugLog(t *testing.T) {
	up, _ := localUpstream(t, "t")
	og := startOpsGateway(t, "\theader {\n\t\tdefer\n\t\tX-Region {http.momento.region}\n\t\tX-Cache {http.momento.cache}\n\t\tX-Op {http.momento.op}\n\t\tX-Breaker {http.momento.breaker}\n\t}\n"+
		"\tmomento {\n"+regionBlock("ph-region", up.URL, "t")+"\t\tregion_header Momento-Region\n\t}")
	r := og.put("/cache/ph-cache?key=secret-key-value&ttl_seconds=60", "v")
	expect(t, r, 204, "")
	for h, want := range map[string]string{"X-Region": "ph-region", "X-Cache": "ph-cache", "X-Op": "set", "X-Breaker": "closed", "Momento-Region": "ph-region"} {
		if got := r.header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	var line string
	for _, l := range strings.Split(og.logs(), "\n") {
		if strings.Contains(l, `"msg":"proxied"`) {
			line = l
		}
	}
	for _, want := range []string{`"level":"debug"`, `"region":"ph-region"`, `"op":"set"`, `"cache":"ph-cache"`, `"status":204`, `"duration":`} {
		if !strings.Contains(line, want) {
			t.Errorf("debug line %q lacks %s", line, want)
		}
	}
	if strings.Contains(line, "secret-key-value") {
		t.Error("the debug line carries the key")
	}
}

func TestLocalBackendMetrics(t *testing.T) {
	og := startOpsGateway(t, "\tmomento_local")
	expect(t, og.put("/cache/c?key=a&ttl_seconds=60", "12345"), 204, "")
	expect(t, og.put("/cache/c?key=bb&ttl_seconds=60", "678"), 204, "")
	m := og.adminGet(t, "/metrics")
	if got := metric(m, "caddy_momento_local_items", ""); got != 2 {
		t.Errorf("caddy_momento_local_items = %v, want 2", got)
	}
	if got := metric(m, "caddy_momento_local_bytes", ""); got != 11 {
		t.Errorf("caddy_momento_local_bytes = %v, want 11 (keys and values)", got)
	}
}
