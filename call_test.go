package momento

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Unit tests of request parsing: no Caddy, no sockets. What a well-formed
// request becomes upstream, and what a malformed one is answered.

func parse(t *testing.T, method, target, contentType string) *call {
	t.Helper()
	r := httptest.NewRequest(method, target, strings.NewReader(""))
	if contentType != "" {
		r.Header.Set("Content-Type", contentType)
	}
	c, ours := parseCall(r)
	if !ours {
		t.Fatalf("%s %s was not taken as an API call", method, target)
	}
	return c
}

func TestParseCallBuildsTheUpstreamRequest(t *testing.T) {
	cases := []struct {
		method, target, contentType string
		op                          op
		path, query                 string
	}{
		{"GET", "/cache/demo?key=hello", "", opGet, "/cache/demo", "key=hello"},
		{"GET", "/cache/demo?key=a%20b%2Fc", "", opGet, "/cache/demo", "key=a+b%2Fc"},
		{"GET", "/cache/demo?key=a+b", "", opGet, "/cache/demo", "key=a+b"},
		{"GET", "/cache/demo?key_base64=aGVsbG8", "", opGet, "/cache/demo", "key_base64=aGVsbG8"},
		{"GET", "/cache/demo?key_base64=aGVsbG8%3D", "", opGet, "/cache/demo", "key_base64=aGVsbG8"},
		{"GET", "/cache/demo?key_base64=aGVsbG8=", "", opGet, "/cache/demo", "key_base64=aGVsbG8"},
		{"GET", "/cache/demo?key=a;b", "", opGet, "/cache/demo", "key=a%3Bb"},
		{"GET", "/cache/demo?key=a;b&x;y=z", "", opGet, "/cache/demo", "key=a%3Bb"},
		{"PUT", "/cache/demo?key=k&ttl_seconds=0060", "", opSet, "/cache/demo", "key=k&ttl_seconds=60"},
		{"PUT", "/cache/demo?ttl_seconds=60&key=k", "", opSet, "/cache/demo", "key=k&ttl_seconds=60"},
		{"DELETE", "/cache/demo?key=k&token=client-secret&other=x", "", opDelete, "/cache/demo", "key=k"},
		{"POST", "/topics/c/t", "text/plain; charset=utf-8", opPublish, "/topics/c/t", ""},
		{"POST", "/topics/c/t?token=x", "application/octet-stream", opPublish, "/topics/c/t", ""},
		{"POST", "/topics/c/t", "application/json", opPublish, "/topics/c/t", ""},
		{"POST", "/topics/c/t", "", opPublish, "/topics/c/t", ""},
		{"GET", "/topics/c/t", "", opSubscribe, "/topics/c/t", ""},
		{"GET", "/topics/c/t?sequence_number=3&sequence_page=7", "", opSubscribe, "/topics/c/t", "sequence_number=3&sequence_page=7"},
		{"GET", "/topics/c/t?sequence_page=07&sequence_number=003", "", opSubscribe, "/topics/c/t", "sequence_number=3&sequence_page=7"},
	}
	for _, tc := range cases {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			c := parse(t, tc.method, tc.target, tc.contentType)
			if c.refusal != nil {
				t.Fatalf("refused: %d %s", c.refusal.status, c.refusal.msg)
			}
			if c.op != tc.op || c.upstreamPath("") != tc.path || c.upstreamQuery() != tc.query {
				t.Fatalf("op %v, upstream %s?%s; want %v, %s?%s", c.op, c.upstreamPath(""), c.upstreamQuery(), tc.op, tc.path, tc.query)
			}
		})
	}
}

func TestParseCallRefusesMalformedRequests(t *testing.T) {
	cases := []struct {
		name, method, target, contentType string
		status                            int
		msg                               string
	}{
		{"no key", "GET", "/cache/c", "", 400, "key (or key_base64) is required"},
		{"empty key", "GET", "/cache/c?key=", "", 400, "key must not be empty"},
		{"both keys", "GET", "/cache/c?key=a&key_base64=YQ", "", 400, "either key or key_base64"},
		{"repeated key", "GET", "/cache/c?key=a&key=b", "", 400, "more than once"},
		{"bad base64", "GET", "/cache/c?key_base64=***", "", 400, "key_base64 is not URL-safe base64"},
		{"LF in base64", "GET", "/cache/c?key_base64=Y%0AQ", "", 400, "key_base64 is not URL-safe base64"},
		{"CR LF in base64", "PUT", "/cache/c?key_base64=Y%0D%0AQ&ttl_seconds=5", "", 400, "key_base64 is not URL-safe base64"},
		{"trailing LF in base64", "DELETE", "/cache/c?key_base64=YQ%0A", "", 400, "key_base64 is not URL-safe base64"},
		{"leading CR in base64", "GET", "/cache/c?key_base64=%0DYQ", "", 400, "key_base64 is not URL-safe base64"},
		{"standard base64", "GET", "/cache/c?key_base64=a%2Bb/", "", 400, "key_base64 is not URL-safe base64"},
		{"padding inside base64", "GET", "/cache/c?key_base64=YQ%3D%3DYQ", "", 400, "key_base64 is not URL-safe base64"},
		{"empty base64", "GET", "/cache/c?key_base64=", "", 400, "key_base64 must not be empty"},
		{"bad escape", "GET", "/cache/c?key=%zz", "", 400, "key is not valid URL encoding"},
		{"set without ttl", "PUT", "/cache/c?key=a", "", 400, "ttl_seconds is required"},
		{"zero ttl", "PUT", "/cache/c?key=a&ttl_seconds=0", "", 400, "positive whole number"},
		{"negative ttl", "PUT", "/cache/c?key=a&ttl_seconds=-5", "", 400, "positive whole number"},
		{"fraction ttl", "PUT", "/cache/c?key=a&ttl_seconds=1.5", "", 400, "positive whole number"},
		{"no cache", "GET", "/cache/?key=a", "", 400, "cache name is missing"},
		{"slash in cache", "GET", "/cache/a/b?key=a", "", 400, "must not contain '/'"},
		{"escaped slash in cache", "GET", "/cache/a%2Fb?key=a", "", 400, "must not contain '/'"},
		{"dotdot in cache", "GET", "/cache/a..b?key=a", "", 400, "'..'"},
		{"control char in cache", "GET", "/cache/a%01b?key=a", "", 400, "control characters"},
		{"long cache name", "GET", "/cache/" + strings.Repeat("c", 256) + "?key=a", "", 400, "longer than 255 bytes"},
		{"POST on a cache", "POST", "/cache/c?key=a", "", 405, "use GET, PUT or DELETE"},
		{"PATCH on a cache", "PATCH", "/cache/c?key=a", "", 405, "use GET, PUT or DELETE"},
		{"no topic", "POST", "/topics/c", "text/plain", 400, "topic name is missing"},
		{"empty topic", "GET", "/topics/c/", "", 400, "topic name is missing"},
		{"slash in topic", "GET", "/topics/c/a/b", "", 400, "topic name must not contain '/'"},
		{"dotdot topic", "GET", "/topics/c/..", "", 400, "topic name must not contain '..'"},
		{"bad sequence_number", "GET", "/topics/c/t?sequence_number=-1", "", 400, "sequence_number must be a whole number"},
		{"bad sequence_page", "GET", "/topics/c/t?sequence_page=abc", "", 400, "sequence_page must be a whole number"},
		{"repeated sequence_number", "GET", "/topics/c/t?sequence_number=1&sequence_number=2", "", 400, "given more than once"},
		{"PUT on a topic", "PUT", "/topics/c/t", "text/plain", 405, "use POST to publish or GET to subscribe"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := parse(t, tc.method, tc.target, tc.contentType)
			rf := c.refusal
			if rf == nil || rf.status != tc.status || !strings.Contains(rf.msg, tc.msg) {
				t.Fatalf("refusal %+v; want %d with %q", rf, tc.status, tc.msg)
			}
			w := httptest.NewRecorder()
			rf.write(w)
			if w.Code != tc.status || w.Header().Get("Content-Type") != "text/plain; charset=utf-8" || w.Header().Get("X-Content-Type-Options") != "nosniff" {
				t.Fatalf("written as %d %v", w.Code, w.Header())
			}
			if want := map[string]string{"/cache/": allowedCacheMethods, "/topics": allowedTopicMethods}[tc.target[:7]]; tc.status == 405 && w.Header().Get("Allow") != want {
				t.Errorf("Allow %q, want %q", w.Header().Get("Allow"), want)
			}
		})
	}
}

func TestParseCallLeavesOtherPathsAlone(t *testing.T) {
	for _, target := range []string{"/", "/index.html", "/cache", "/topics", "/cachet/x", "/api/cache/c"} {
		if _, ours := parseCall(httptest.NewRequest(http.MethodGet, target, nil)); ours {
			t.Errorf("%s was taken as an API call", target)
		}
	}
}

// The handler's own rules, applied after parsing: sizes, client tokens,
// prefixes. (The policy's rules have their own end-to-end test.)
func TestCheckCall(t *testing.T) {
	h := &Handler{maxItemSize: 1024, maxKeySize: 8, maxMessageSize: 16, rejectClient: true,
		keyPrefix: compilePrefix("key_prefix", "app/")}
	cases := []struct {
		method, target, contentType string
		size                        int64
		auth                        string
		status                      int
		msg                         string
	}{
		{"PUT", "/cache/c?key=k&ttl_seconds=5", "", 1020, "", 413, "item of 1025 bytes (key 5 + value 1020) exceeds max_item_size (1024 bytes, key plus value"},
		{"POST", "/topics/c/t", "text/plain", 17, "", 413, "message of 17 bytes exceeds max_message_size (16 bytes)"},
		{"GET", "/cache/c?key=123456789", "", 0, "", 400, "key of 9 bytes exceeds max_key_size (8 bytes)"},
		{"GET", "/cache/c?key=k&token=mine", "", 0, "", 400, "does not accept client credentials"},
		{"GET", "/cache/c?key=k", "", 0, "mine", 400, "does not accept client credentials"},
		{"GET", "/cache/c?key=12345678", "", 0, "", 0, ""},
		{"PUT", "/cache/c?key=12345678&ttl_seconds=5", "", 1012, "", 0, ""},
	}
	for _, tc := range cases {
		r := httptest.NewRequest(tc.method, tc.target, strings.NewReader(strings.Repeat("x", int(tc.size))))
		r.Header.Set("Content-Type", tc.contentType)
		if tc.auth != "" {
			r.Header.Set("Authorization", tc.auth)
		}
		c, _ := parseCall(r)
		rf := h.checkCall(c, r)
		switch {
		case tc.status == 0 && rf != nil:
			t.Errorf("%s %s refused: %s", tc.method, tc.target, rf.msg)
		case tc.status == 0 && !strings.HasPrefix(c.upstreamQuery(), "key=app%2F12345678"):
			t.Errorf("key_prefix not applied: %s", c.upstreamQuery())
		case tc.status != 0 && (rf == nil || rf.status != tc.status || !strings.Contains(rf.msg, tc.msg)):
			t.Errorf("%s %s: refusal %+v; want %d %q", tc.method, tc.target, rf, tc.status, tc.msg)
		}
	}
}
