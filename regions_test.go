package momento

import (
	"testing"
)

func TestBuiltinRegions(t *testing.T) {
	if n := len(builtinRegions()); n != 11 {
		t.Fatalf("%d built-in regions, want 11", n)
	}
	ep, ok := builtinEndpoint("us-west-2")
	if !ok || ep != "https://api.cache.cell-4-us-west-2-1.prod.a.momentohq.com" {
		t.Fatalf("us-west-2: %q %v", ep, ok)
	}
}
