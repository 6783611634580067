package momento

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawRequest writes bytes to the gateway on a fresh connection and returns
// the status line and body of the answer.
func rawRequest(t *testing.T, g *gateway, raw string) (status int, body string) {
	t.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestHostileClients(t *testing.T) {
	up, lh := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\ttimeout 300ms\n\t\tmax_key_size 4KiB\n\t\tbreaker {\n\t\t\tfailures 1\n\t\t}\n\t}")

	cases := []struct {
		name, raw string
		status    int
		msg       string
	}{
		{"CR/LF in the request line", "GET /cache/c?key=a\r\nX-Injected: 1 HTTP/1.1\r\nHost: x\r\n\r\n", 400, ""},
		{"CR in a header value", "GET /cache/c?key=a HTTP/1.1\r\nHost: x\r\nX-A: b\rc\r\n\r\n", 400, ""},
		{"NUL in the cache name", "GET /cache/a%00b?key=a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "control characters"},
		{"encoded slash in the cache name", "GET /cache/a%2F..%2Fb?key=a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "must not contain"},
		{"overlong key", "GET /cache/c?key=" + strings.Repeat("k", 5000) + " HTTP/1.1\r\nHost: x\r\n\r\n", 400, "key of 5000 bytes exceeds max_key_size (4096 bytes)"},
		{"overlong cache name", "GET /cache/" + strings.Repeat("c", 300) + "?key=a HTTP/1.1\r\nHost: x\r\n\r\n", 400, "longer than 255 bytes"},
		{"overlong query string", "GET /cache/c?key=a&pad=" + strings.Repeat("p", 2<<20) + " HTTP/1.1\r\nHost: x\r\n\r\n", 431, ""},
		{"huge headers", "GET /cache/c?key=a HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("h", 2<<20) + "\r\n\r\n", 431, ""},
		{"two Content-Lengths", "PUT /cache/c?key=a&ttl_seconds=5 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := rawRequest(t, g, tc.raw)
			if status != tc.status || !strings.Contains(body, tc.msg) {
				t.Fatalf("got %d %q; want %d %q", status, body, tc.status, tc.msg)
			}
		})
	}
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("hostile requests reached the region %d times", n)
	}

	// Encoded CR/LF in a key is just key bytes: it travels escaped and
	// never becomes a header upstream.
	expect(t, g.put("/cache/c?key=a%0D%0AX-Injected:%201&ttl_seconds=60", "v"), 204, "")
	if uri := up.lastURI.Load().(string); strings.ContainsAny(uri, "\r\n") || !strings.Contains(uri, "key=a%0D%0AX-Injected%3A+1") {
		t.Fatalf("upstream request URI %q", uri)
	}
	expect(t, g.get("/cache/c?key=a%0D%0AX-Injected:%201"), 200, "v")

	// Slowloris: a PUT that sends part of its body and stalls gets 408
	// after the timeout, stores nothing, and does not count against the
	// region (failures 1 would have opened the breaker).
	before := lh.Len()
	status, body := rawRequest(t, g, "PUT /cache/c?key=slow&ttl_seconds=60 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
	if status != 408 || !strings.Contains(body, "nothing was stored") {
		t.Fatalf("slow body: %d %q", status, body)
	}
	if lh.Len() != before {
		t.Fatal("a stalled upload was stored")
	}
	expect(t, g.get("/cache/c?key=slow"), 404, "Key Not Found")
}
