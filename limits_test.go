package momento

import (
	"context"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// The per-client limits count an IPv6 client by its /64 network, which
// one host usually holds whole, and an IPv4 client by its address.
func TestClientAddressGroupsIPv6By64(t *testing.T) {
	addressOf := func(ip string) string {
		r := httptest.NewRequest("GET", "/", nil)
		ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
		return clientAddress(r.WithContext(ctx))
	}
	for _, tc := range []struct{ ip, want string }{
		{"203.0.113.7", "203.0.113.7"},
		{"2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:bbbb:cccc:dddd:eeee", "2001:db8:1:2::/64"},
		{"2001:db8:1:3::1", "2001:db8:1:3::/64"},
		{"::ffff:203.0.113.7", "::ffff:203.0.113.7"},
		{"", noAddress},
	} {
		if got := addressOf(tc.ip); got != tc.want {
			t.Errorf("client %q counts as %q, want %q", tc.ip, got, tc.want)
		}
	}
}
