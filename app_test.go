package momento

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// Regions defined once in the global momento options serve every momento
// handler, and each region has one breaker, whichever handler reaches it.
func TestGlobalRegionsServeEveryHandler(t *testing.T) {
	f := &failing{status: 500}
	bad := newUpstream(t, f)
	good, _ := localUpstream(t, "tok-good")
	g := runCaddyfile(t, func(port int, logPath string) string {
		return strings.Replace(globalOptions("off", logPath), "{\n", fmt.Sprintf(`{
	momento {
		region good {
			endpoint %s
			token tok-good
		}
		region bad {
			endpoint %s
			token tok-bad
			breaker {
				failures 2
				open_for 1m
			}
		}
	}
`, good.URL, bad.URL), 1) + fmt.Sprintf(`:%d {
	bind 127.0.0.1
	handle_path /public/* {
		momento {
			region bad
			region good
			route bad-* bad
			default_region good
			allow {
				ops get
			}
		}
	}
	momento {
		route bad-* bad
		default_region good
	}
}
`, port)
	})

	// The handler without regions of its own uses the global ones.
	expect(t, g.put("/cache/c?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
	expect(t, g.get("/public/cache/c?key=k"), http.StatusOK, "v")
	expect(t, g.put("/public/cache/c?key=k&ttl_seconds=60", "v"), http.StatusForbidden, "operation set is not allowed here")
	if a := good.lastAuth.Load(); a != "tok-good" {
		t.Fatalf("the region saw authorization %q", a)
	}

	// One breaker for region bad: two failures through one handler open it
	// for the other too, with the global breaker settings.
	expect(t, g.get("/cache/bad-1?key=k"), http.StatusInternalServerError, "boom")
	expect(t, g.get("/public/cache/bad-1?key=k"), http.StatusInternalServerError, "boom")
	r := g.get("/cache/bad-1?key=k")
	expect(t, r, http.StatusServiceUnavailable, "circuit breaker is open")
	expect(t, g.get("/public/cache/bad-1?key=k"), http.StatusServiceUnavailable, "circuit breaker is open")
	if ra := r.header.Get("Retry-After"); ra != "60" && ra != "59" {
		t.Fatalf("Retry-After %q, want the global open_for of 1m", ra)
	}
}

// A region is defined once per config: two handlers that define it with
// different settings are refused at load, naming both places, rather than
// one silently setting the other's breaker.
func TestRegionDefinedTwiceDifferentlyIsRefused(t *testing.T) {
	region := func(failures int) string {
		return fmt.Sprintf("\t\tmomento {\n\t\t\tregion r {\n\t\t\t\tendpoint http://127.0.0.1:9\n\t\t\t\ttoken t\n\t\t\t}\n\t\t\tbreaker {\n\t\t\t\tfailures %d\n\t\t\t}\n\t\t}\n", failures)
	}
	err := loadError(t, "\thandle /a/* {\n"+region(3)+"\t}\n\thandle /b/* {\n"+region(5)+"\t}")
	if err == nil {
		t.Fatal("a config with two definitions of region r loaded")
	}
	for _, want := range []string{`region "r" is defined twice with different settings`, "Caddyfile:", "global `momento` options"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	// A breaker block in a handler that only names global regions would
	// apply to nothing.
	cf := "{\n\tmomento {\n\t\tregion r {\n\t\t\tendpoint http://127.0.0.1:9\n\t\t\ttoken t\n\t\t}\n\t}\n}\n:8080 {\n\tmomento {\n\t\tregion r\n\t\tbreaker {\n\t\t\tfailures 2\n\t\t}\n\t}\n}\n"
	if _, _, err := adaptCaddyfile(cf); err == nil || !strings.Contains(err.Error(), "defines no region of its own") || !strings.Contains(err.Error(), "Caddyfile:12") {
		t.Errorf("breaker in a handler of global regions: %v", err)
	}
	// The same definition twice is one region, as before.
	if err := loadError(t, "\thandle /a/* {\n"+region(3)+"\t}\n\thandle /b/* {\n"+region(3)+"\t}"); err != nil {
		t.Fatalf("two identical definitions refused: %v", err)
	}
}
