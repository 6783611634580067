package momento

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// Code written for Momento's HTTP API works unchanged against the gateway.
// This test sends requests shaped like Momento's published clients, once
// straight at the embedded backend (as they would go to Momento) and once
// through the gateway, and requires the same observable results, request
// by request: the same status, and the same body for successes and for
// Momento's own "Key Not Found" and "Cache Not Found". The shapes are
// written from the clients' documented request forms:
//
//   - fetcher: the MomentoFetcher of Momento's Cloudflare Workers and Fastly
//     Compute examples: the key and the token pasted into the query
//     unencoded (the URL parser of fetch percent-encodes what it must).
//   - deno: the Deno momento-http-client: encodeURIComponent(key), the token
//     in the Authorization header.
//   - curl: Momento's docs: curl -H "Authorization: …" -d '…' (a form
//     Content-Type on publishes), -X PUT --data-binary for sets.
//   - json: Momento's video-streaming demo: publishes as application/json.
//
// Keys: ASCII, spaces, unicode, / + & = % ? ; characters, empty, binary
// (key_base64); values of 1 and 5 MiB; TTL expiry; misses and missing caches.
func TestMomentoClientsGetTheSameAnswers(t *testing.T) {
	const token = "compat-token"
	up, _ := localUpstreamWith(t, token, []string{"cache", "other"})
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, token)+"\t}")
	direct := &compatTarget{name: "direct", base: up.URL, token: token, client: &http.Client{}}
	gateway := &compatTarget{name: "gateway", base: g.base, token: "client-token-never-forwarded", client: &http.Client{}}

	mib := make([]byte, 1<<20)
	_, _ = rand.Read(mib)
	big := bytes.Repeat([]byte("v"), 5<<20) // key plus value over 5 MiB: refused by both

	keys := []string{"plain", "with space", "ünïcødé-键", "a/b", "a+b", "a&b", "a=b", "100%", "a%20b", "what?", "a;b", "#hash", ""}
	shapes := []compatShape{fetcherShape, denoShape, curlShape}
	for _, shape := range shapes {
		for _, key := range keys {
			value := []byte("value of " + key)
			steps := []compatStep{
				{"set", http.MethodPut, "cache", key, "60", value, ""},
				{"get", http.MethodGet, "cache", key, "", nil, ""},
				{"delete", http.MethodDelete, "cache", key, "", nil, ""},
				{"get after delete", http.MethodGet, "cache", key, "", nil, ""},
				{"get in a missing cache", http.MethodGet, "missing", key, "", nil, ""},
			}
			if shape.name == "fetcher" && strings.Contains(key, "#") {
				// fetch cuts the URL at '#': the token goes with it, and
				// Momento answers 401. Not a case a client can rely on.
				continue
			}
			for _, st := range steps {
				compare(t, shape, st, direct, gateway)
			}
		}
		for _, st := range []compatStep{
			{"set 1 MiB", http.MethodPut, "cache", "mib", "60", mib, ""},
			{"get 1 MiB", http.MethodGet, "cache", "mib", "", nil, ""},
			{"set over 5 MiB", http.MethodPut, "cache", "big", "60", big, ""},
			{"get the refused", http.MethodGet, "cache", "big", "", nil, ""},
			{"set without ttl", http.MethodPut, "cache", "k", "", []byte("v"), ""},
			{"miss", http.MethodGet, "cache", "never-set", "", nil, ""},
		} {
			compare(t, shape, st, direct, gateway)
		}
	}

	// Binary keys, addressed in URL-safe base64.
	for _, raw := range [][]byte{{0, 1, 2, 0xff}, []byte("plain"), {0xfe, '&', '='}} {
		b64 := base64.RawURLEncoding.EncodeToString(raw)
		for _, st := range []compatStep{
			{"set binary key", http.MethodPut, "cache", "", "60", []byte("bin"), b64},
			{"get binary key", http.MethodGet, "cache", "", "", nil, b64},
			{"get binary key, padded", http.MethodGet, "cache", "", "", nil, base64.URLEncoding.EncodeToString(raw)},
		} {
			compare(t, denoShape, st, direct, gateway)
		}
	}

	// Topics: publishes as curl -d (a form type), JSON, text and binary,
	// read with long polls that start without sequence parameters.
	for _, pub := range []struct{ contentType, body string }{
		{"application/x-www-form-urlencoded", "hello world!"},
		{"application/json", `{"frame":1}`},
		{"text/plain; charset=utf-8", "héllo"},
		{"application/octet-stream", "\x00\x01binary"},
		{"", "no type at all"},
	} {
		var answers [2]string
		for i, tg := range []*compatTarget{direct, gateway} {
			// One topic each (they share the backend), read from the start.
			topic := fmt.Sprintf("t%d-%s", len(pub.body), tg.name)
			r := tg.publish(t, "cache", topic, pub.contentType, pub.body)
			if r.status != http.StatusNoContent {
				t.Fatalf("%s: publish %q as %q: %d %q", tg.name, pub.body, pub.contentType, r.status, r.body)
			}
			answers[i] = withoutPages(t, tg.subscribe(t, "cache", topic).body)
		}
		if answers[0] != answers[1] {
			t.Errorf("publish %q as %q: subscribers read\n direct:  %s\n gateway: %s", pub.body, pub.contentType, answers[0], answers[1])
		}
	}
	if r := gateway.subscribe(t, "missing", "t"); r.status != http.StatusNotFound || r.body != "Cache Not Found" {
		t.Errorf("subscribe to a missing cache through the gateway: %d %q", r.status, r.body)
	}
	// (A TTL's expiry through the gateway: TestLocalCacheFreshnessAndTTL.)
}

// compatTarget is where a client sends its requests: the backend with the
// real token, or the gateway with a token of the client's own, which the
// gateway replaces.
type compatTarget struct {
	name, base, token string
	client            *http.Client
}

type compatStep struct {
	name, method, cache, key, ttl string
	body                          []byte
	keyBase64                     string
}

// compatShape builds a request the way one of Momento's clients does.
type compatShape struct {
	name  string
	build func(tg *compatTarget, st compatStep) *http.Request
}

// jsURL stands for the URL parser of fetch: what a client pastes into the
// query is percent-encoded where the WHATWG URL standard says so (spaces,
// quotes, angle brackets, controls, non-ASCII), and a '#' starts the
// fragment, which is never sent.
func jsURL(raw string) string {
	if i := strings.IndexByte(raw, '#'); i >= 0 {
		raw = raw[:i]
	}
	var b strings.Builder
	for i := 0; i < len(raw); i++ {
		switch c := raw[i]; {
		case c <= ' ' || c >= 0x7f || c == '"' || c == '<' || c == '>':
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

func newCompatRequest(method, target string, body []byte) *http.Request {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	r, err := http.NewRequest(method, target, rd)
	if err != nil {
		panic(err)
	}
	return r
}

var fetcherShape = compatShape{"fetcher", func(tg *compatTarget, st compatStep) *http.Request {
	q := "key=" + st.key + "&token=" + tg.token
	if st.ttl != "" {
		q += "&&ttl_seconds=" + st.ttl // sic: the example's own double '&'
	}
	return newCompatRequest(st.method, jsURL(tg.base+"/cache/"+st.cache+"?"+q), st.body)
}}

var denoShape = compatShape{"deno", func(tg *compatTarget, st compatStep) *http.Request {
	q := "key=" + url.PathEscape(st.key) // encodeURIComponent
	if st.keyBase64 != "" {
		q = "key_base64=" + st.keyBase64
	}
	if st.ttl != "" {
		q += "&ttl_seconds=" + st.ttl
	}
	r := newCompatRequest(st.method, tg.base+"/cache/"+st.cache+"?"+q, st.body)
	r.Header.Set("Authorization", tg.token)
	return r
}}

var curlShape = compatShape{"curl", func(tg *compatTarget, st compatStep) *http.Request {
	q := "key=" + url.QueryEscape(st.key)
	if st.ttl != "" {
		q += "&ttl_seconds=" + st.ttl
	}
	r := newCompatRequest(st.method, tg.base+"/cache/"+st.cache+"?"+q, st.body)
	r.Header.Set("Authorization", tg.token)
	if st.body != nil {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	return r
}}

func (tg *compatTarget) send(t *testing.T, shape compatShape, st compatStep) response {
	t.Helper()
	resp, err := tg.client.Do(shape.build(tg, st))
	if err != nil {
		t.Fatalf("%s, %s, %s %q: %v", tg.name, shape.name, st.name, st.key, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: string(b)}
}

func (tg *compatTarget) publish(t *testing.T, cache, topic, contentType, body string) response {
	t.Helper()
	r := newCompatRequest(http.MethodPost, tg.base+"/topics/"+cache+"/"+topic, []byte(body))
	r.Header.Set("Authorization", tg.token)
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	resp, err := tg.client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, body: string(b)}
}

// subscribe long-polls the topic from the start, as a client without
// sequence parameters does.
func (tg *compatTarget) subscribe(t *testing.T, cache, topic string) response {
	t.Helper()
	r := newCompatRequest(http.MethodGet, tg.base+"/topics/"+cache+"/"+topic+"?token="+tg.token, nil)
	resp, err := tg.client.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, body: string(b)}
}

// compare sends one step both ways and requires the same answer.
func compare(t *testing.T, shape compatShape, st compatStep, direct, gateway *compatTarget) {
	t.Helper()
	d := direct.send(t, shape, st)
	g := gateway.send(t, shape, st)
	sameBody := d.body == g.body
	if d.status >= 300 && d.body != "Key Not Found" && d.body != "Cache Not Found" {
		sameBody = true // the wording of other refusals is each side's own
	}
	if d.status != g.status || !sameBody {
		t.Errorf("%s, %s key %q: Momento's answer %d %.60q, the gateway's %d %.60q", shape.name, st.name, st.key, d.status, d.body, g.status, g.body)
	}
}

// withoutPages drops the sequence_page values of a subscribe answer: each
// topic has its own.
func withoutPages(t *testing.T, answer string) string {
	t.Helper()
	var page upstreamPage
	if err := json.Unmarshal([]byte(answer), &page); err != nil {
		t.Fatalf("subscribe answer %q: %v", answer, err)
	}
	for _, it := range page.Items {
		if it.Item != nil {
			it.Item.SequencePage = 0
		}
	}
	b, _ := json.Marshal(page)
	return string(b)
}
