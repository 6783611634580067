package momento

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
)

func TestKeyPrefixPerUser(t *testing.T) {
	up, lh := localUpstream(t, "t")
	g := startGateway(t, basicAuthBlock+"\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix {http.auth.user.id}:\n\t}")
	as := func(user, method, target, body string) response {
		var r response
		if body == "" {
			r = g.do(method, target, nil, "Authorization", basicAuth(user))
		} else {
			r = g.do(method, target, strings.NewReader(body), "Authorization", basicAuth(user))
		}
		return r
	}

	expect(t, as("alice", "PUT", "/cache/c?key=cart&ttl_seconds=60", "alice's cart"), http.StatusNoContent, "")
	if got := up.lastURI.Load(); got != "/cache/c?key=alice%3Acart&ttl_seconds=60" {
		t.Fatalf("upstream saw %v; want alice's prefix on the key", got)
	}
	expect(t, as("bob", "PUT", "/cache/c?key=cart&ttl_seconds=60", "bob's cart"), http.StatusNoContent, "")
	expect(t, as("alice", "GET", "/cache/c?key=cart", ""), http.StatusOK, "alice's cart")
	expect(t, as("bob", "GET", "/cache/c?key=cart", ""), http.StatusOK, "bob's cart")
	if lh.Len() != 2 {
		t.Fatalf("backend holds %d items, want 2 (one per user)", lh.Len())
	}

	// key_base64 is binary-safe: the prefix goes on the decoded bytes.
	binKey := []byte{0xff, 0x00, 'k'}
	b64 := base64.RawURLEncoding.EncodeToString(binKey)
	expect(t, as("alice", "PUT", "/cache/c?key_base64="+b64+"&ttl_seconds=60", "binary"), http.StatusNoContent, "")
	want := base64.RawURLEncoding.EncodeToString(append([]byte("alice:"), binKey...))
	if got := up.lastURI.Load(); got != "/cache/c?key_base64="+want+"&ttl_seconds=60" {
		t.Fatalf("upstream saw %v; want key_base64=%s", got, want)
	}
	expect(t, as("alice", "GET", "/cache/c?key_base64="+b64, ""), http.StatusOK, "binary")
	expect(t, as("bob", "GET", "/cache/c?key_base64="+b64, ""), http.StatusNotFound, "Key Not Found")

	// Alice cannot reach Bob's namespace by crafting a key.
	expect(t, as("alice", "GET", "/cache/c?key=..%2Fbob%3Acart", ""), http.StatusNotFound, "Key Not Found")
}

// Without a signed-in user, the prefix template is empty: refused, never
// the shared namespace. (No auth handler in front here at all.)
func TestKeyPrefixWithoutUserIsRefused(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix {http.auth.user.id}:\n\t}")
	expect(t, g.get("/cache/c?key=k"), http.StatusForbidden, "key_prefix needs {http.auth.user.id}, which is empty for this request")
	expect(t, g.put("/cache/c?key=k&ttl_seconds=5", "v"), http.StatusForbidden, "key_prefix needs")
	if n := up.hits.Load(); n != 0 {
		t.Fatalf("refused requests reached the region %d times", n)
	}
}

func TestKeyPrefixEscapesPlaceholderValues(t *testing.T) {
	up, _ := localUpstream(t, "t")
	// A user id that contains the template's separator cannot collide with
	// another user's namespace.
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix {http.request.header.X-User}:\n\t}")
	expect(t, g.do(http.MethodGet, "/cache/c?key=k", nil, "X-User", "alice:x"), http.StatusNotFound, "Key Not Found")
	if got := up.lastURI.Load(); got != "/cache/c?key=alice%253Ax%3Ak" {
		t.Fatalf("upstream saw %v", got)
	}
}

func TestStaticKeyPrefix(t *testing.T) {
	up, _ := localUpstream(t, "t")
	g := startGateway(t, "\tmomento {\n"+regionBlock("r", up.URL, "t")+"\t\tkey_prefix app1/\n\t}")
	expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
	if got := up.lastURI.Load(); got != "/cache/c?key=app1%2Fk" {
		t.Fatalf("upstream saw %v", got)
	}
}
