package momento

import (
	"net/http"
	"strings"
	"testing"
)

func TestAllowRules(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+
		"\t\tallow {\n\t\t\tcaches public-* shared\n\t\t\tops get set\n\t\t\tmax_ttl 1h\n\t\t}\n\t}")

	// Refused: each names its rule, and none reaches the region.
	expect(t, g.get("/cache/private?key=k"), http.StatusForbidden, `cache "private" is not allowed here (allow caches: public-* shared)`)
	expect(t, g.do(http.MethodDelete, "/cache/public-1?key=k", nil), http.StatusForbidden, "operation delete is not allowed here (allow ops: get set)")
	expect(t, g.put("/cache/public-1?key=k&ttl_seconds=3601", "v"), http.StatusBadRequest, "ttl_seconds 3601 exceeds max_ttl (3600 seconds)")
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("refused requests reached the region %d times", n)
	}

	// Allowed.
	expect(t, g.put("/cache/public-1?key=k&ttl_seconds=3600", "v"), http.StatusNoContent, "")
	expect(t, g.get("/cache/public-1?key=k"), http.StatusOK, "v")
	expect(t, g.get("/cache/shared?key=k"), http.StatusNotFound, "Key Not Found")
	if n := up.hits.Load(); n != 3 {
		t.Fatalf("allowed requests reached the region %d times, want 3", n)
	}
}

// A read-only public handler and a full-access internal one, side by side
// under different matchers, in front of the same region.
func TestTwoHandlersSideBySide(t *testing.T) {
	up, _ := localUpstream(t, "t")
	region := regionBlock("r", up.URL, "t")
	g := startGateway(t, "\thandle_path /public/* {\n\t\tmomento {\n"+region+"\t\t\tallow {\n\t\t\t\tops get\n\t\t\t}\n\t\t}\n\t}\n"+
		"\thandle_path /internal/* {\n\t\tmomento {\n"+region+"\t\t}\n\t}")

	expect(t, g.put("/public/cache/c?key=k&ttl_seconds=60", "v"), http.StatusForbidden, "operation set is not allowed here (allow ops: get)")
	expect(t, g.put("/internal/cache/c?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
	expect(t, g.get("/public/cache/c?key=k"), http.StatusOK, "v")
	expect(t, g.do(http.MethodDelete, "/public/cache/c?key=k", nil), http.StatusForbidden, "operation delete")
	expect(t, g.do(http.MethodDelete, "/internal/cache/c?key=k", nil), http.StatusNoContent, "")
}

func TestPolicyCaddyfileErrors(t *testing.T) {
	cases := []struct{ block, want string }{
		{"allow {\n ops get fetch\n }", `allow ops: unknown operation "fetch" (use get, set, delete, publish, subscribe)`},
		{"allow {\n caches [oops\n }", `allow caches: cache glob "[oops" is malformed`},
		{"allow {\n max_ttl 500ms\n }", "max_ttl 500ms is under a second"},
		{"allow {\n writes yes\n }", `unknown subdirective "writes" in allow`},
		{"cors {\n max_age 1m\n }", "cors needs an origins line"},
		{"cors {\n origins app.example.com\n }", `origin "app.example.com" must be scheme://host[:port]`},
		{"cors {\n origins https://app.example.com/path\n }", "must have no path"},
		{"cors {\n allow_credentials yes\n origins *\n }", "wrong argument count"},
		{"key_prefix a b", "key_prefix takes one value"},
	}
	for _, tc := range cases {
		t.Run(tc.want, func(t *testing.T) {
			cf := ":8080 {\n\tmomento {\n region us-east-1 {\n token x\n }\n " + tc.block + "\n\t}\n}\n"
			_, _, err := adaptCaddyfile(cf)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "Caddyfile:") {
				t.Fatalf("error %v; want it to contain %q and a line", err, tc.want)
			}
		})
	}
}
