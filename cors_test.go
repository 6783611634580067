package momento

import (
	"net/http"
	"strings"
	"testing"
)

func TestCORS(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\tallow {\n\t\t\tops get set\n\t\t}\n"+
		"\t\tcors {\n\t\t\torigins https://app.example.com http://localhost:3000\n\t\t\tmax_age 10m\n\t\t\tallow_credentials\n\t\t}\n\t}")

	// Preflight from an allowed origin: answered by the gateway, with the
	// methods this handler's policy allows.
	r := g.do(http.MethodOptions, "/cache/c?key=k", nil, "Origin", "https://app.example.com",
		"Access-Control-Request-Method", "PUT", "Access-Control-Request-Headers", "content-type")
	expect(t, r, http.StatusNoContent, "")
	for h, want := range map[string]string{
		"Access-Control-Allow-Origin":      "https://app.example.com",
		"Access-Control-Allow-Methods":     "GET, PUT",
		"Access-Control-Allow-Headers":     "Content-Type, Authorization",
		"Access-Control-Max-Age":           "600",
		"Access-Control-Allow-Credentials": "true",
	} {
		if got := r.header.Get(h); got != want {
			t.Errorf("preflight %s = %q, want %q", h, got, want)
		}
	}
	if !strings.Contains(strings.Join(r.header.Values("Vary"), ","), "Origin") {
		t.Errorf("preflight Vary %q lacks Origin", r.header.Values("Vary"))
	}

	// Preflight from another origin: 403.
	r = g.do(http.MethodOptions, "/cache/c?key=k", nil, "Origin", "https://evil.example",
		"Access-Control-Request-Method", "PUT")
	expect(t, r, http.StatusForbidden, "origin https://evil.example is not allowed (cors origins: https://app.example.com http://localhost:3000)")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("refused preflight carries Access-Control-Allow-Origin")
	}

	// Actual requests from an allowed origin carry the echoed origin, even
	// refusals (so the page can read why).
	r = g.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=60", strings.NewReader("v"), "Origin", "http://localhost:3000")
	expect(t, r, http.StatusNoContent, "")
	if r.header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" || r.header.Get("Vary") != "Origin" {
		t.Errorf("response headers %v", r.header)
	}
	r = g.do(http.MethodPut, "/cache/c?key=k", strings.NewReader("v"), "Origin", "http://localhost:3000")
	expect(t, r, http.StatusBadRequest, "ttl_seconds is required")
	if r.header.Get("Access-Control-Allow-Origin") != "http://localhost:3000" {
		t.Error("refusal lacks Access-Control-Allow-Origin: the page could not read the message")
	}

	// Actual requests from another origin are refused (a simple request
	// needs no preflight, so the browser alone would not stop it).
	hits := up.hits.Load()
	expect(t, g.do(http.MethodGet, "/cache/c?key=k", nil, "Origin", "https://evil.example"), http.StatusForbidden, "is not allowed")
	if up.hits.Load() != hits {
		t.Error("a request from a refused origin reached the region")
	}

	// Same-origin and origin-less requests need no CORS.
	r = g.do(http.MethodGet, "/cache/c?key=k", nil, "Origin", g.base)
	expect(t, r, http.StatusOK, "v")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Error("same-origin response carries CORS headers")
	}
	expect(t, g.get("/cache/c?key=k"), http.StatusOK, "v")
}

func TestNoCORSWithoutCORSBlock(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t}")
	r := g.do(http.MethodOptions, "/cache/c?key=k", nil, "Origin", "https://app.example.com", "Access-Control-Request-Method", "PUT")
	if r.header.Get("Access-Control-Allow-Origin") != "" || r.header.Get("Access-Control-Allow-Methods") != "" {
		t.Fatalf("CORS headers without a cors block: %v", r.header)
	}
	r = g.do(http.MethodGet, "/cache/c?key=k", nil, "Origin", "https://app.example.com")
	expect(t, r, http.StatusNotFound, "Key Not Found")
	if r.header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("CORS headers without a cors block: %v", r.header)
	}
	if up.hits.Load() != 1 {
		t.Fatalf("region saw %d requests, want 1 (the OPTIONS is answered by the gateway)", up.hits.Load())
	}
}
