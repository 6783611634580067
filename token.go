package momento

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// TokenKind says which of Momento's credential formats a token is.
type TokenKind string

// The credential formats the gateway recognises, as the SDKs tell them apart.
const (
	// TokenV1 is a v1 API key: base64 of JSON {"api_key": <jwt>, "endpoint": <host>}.
	TokenV1 TokenKind = "v1"
	// TokenLegacy is a JWT whose claims carry the cache endpoint in "c".
	TokenLegacy TokenKind = "legacy"
	// TokenV2 is a JWT with claim t="g"; it works in any region and carries no endpoint.
	TokenV2 TokenKind = "v2"
	// TokenOpaque is anything else (a local backend's token, say); it is sent unchanged.
	TokenOpaque TokenKind = "opaque"
)

// Token is a Momento credential held by the gateway. It cannot be printed:
// every formatting path (fmt verbs, JSON, zap) yields a redacted form, so a
// token that slips into a log line or error message stays secret. The value
// sits behind a pointer so that even fmt's reflection over a struct that
// holds a Token prints an address, not the secret.
type Token struct {
	secret *tokenSecret
}

type tokenSecret struct {
	// header is what goes upstream in the authorization header, as an
	// http.Header value shared by every request (the transport only reads
	// it): for v1 keys the inner api_key, as the SDKs send it; otherwise the
	// token as given.
	header []string
	// fingerprint identifies the token in logs without revealing it.
	fingerprint string
	kind        TokenKind
	// endpoint is the HTTP endpoint the token names, if any.
	endpoint string
}

// parseToken recognises the format of a Momento credential and derives the
// HTTP endpoint it names, if any. It never fails: an unrecognised token is
// opaque and passes upstream unchanged. Nothing about the token's content
// is ever put in an error.
func parseToken(raw string) Token {
	raw = strings.TrimSpace(raw)
	sum := sha256.Sum256([]byte(raw))
	s := &tokenSecret{header: []string{raw}, fingerprint: hex.EncodeToString(sum[:4]), kind: TokenOpaque}

	// The SDKs' rule: standard base64 of JSON is a v1 key; else a JWT.
	if decoded, err := base64.StdEncoding.DecodeString(raw); err == nil {
		var v1 struct {
			APIKey   string `json:"api_key"`
			Endpoint string `json:"endpoint"`
		}
		if json.Unmarshal(decoded, &v1) == nil && v1.APIKey != "" {
			s.kind = TokenV1
			s.header = []string{v1.APIKey}
			if v1.Endpoint != "" {
				s.endpoint = "https://api.cache." + strings.ToLower(strings.TrimSuffix(v1.Endpoint, "."))
			}
			return Token{s}
		}
	}
	if claims, ok := jwtClaims(raw); ok {
		var c struct {
			C string `json:"c"`
			T string `json:"t"`
		}
		if json.Unmarshal(claims, &c) == nil {
			switch {
			case c.T == "g":
				s.kind = TokenV2
			case c.C != "":
				s.kind = TokenLegacy
				// c is the SDKs' cache host, "cache.<endpoint>"; HTTP is "api." in front.
				s.endpoint = "https://api." + strings.ToLower(strings.TrimSuffix(c.C, "."))
			}
		}
	}
	return Token{s}
}

// jwtClaims returns the decoded payload of a JWT, without verifying it:
// the gateway only reads which endpoint the token names.
func jwtClaims(raw string) ([]byte, bool) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return nil, false
	}
	return payload, true
}

// Kind is the token's format.
func (t Token) Kind() TokenKind {
	if t.secret == nil {
		return ""
	}
	return t.secret.kind
}

// Fingerprint is a short, non-reversible identifier of the token (the first
// 8 hex digits of its SHA-256), safe for logs and the admin API.
func (t Token) Fingerprint() string {
	if t.secret == nil {
		return ""
	}
	return t.secret.fingerprint
}

// Endpoint is the HTTP endpoint the token names (v1 and legacy tokens), or "".
func (t Token) Endpoint() string {
	if t.secret == nil {
		return ""
	}
	return t.secret.endpoint
}

// authHeader is the value of the authorization header sent upstream. It is
// the only way to read the secret, unexported on purpose.
func (t Token) authHeader() []string {
	if t.secret == nil {
		return nil
	}
	return t.secret.header
}

func (t Token) redacted() string {
	if t.secret == nil {
		return "[no token]"
	}
	return "[token " + string(t.secret.kind) + " " + t.secret.fingerprint + "]"
}

// String redacts the token.
func (t Token) String() string { return t.redacted() }

// GoString redacts the token for %#v.
func (t Token) GoString() string { return t.redacted() }

// Format redacts the token for every fmt verb (%x and %q included).
func (t Token) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, t.redacted()) }

// MarshalJSON redacts the token, so encoders (zap's reflection included) never see it.
func (t Token) MarshalJSON() ([]byte, error) { return json.Marshal(t.redacted()) }

// MarshalText redacts the token for text encoders.
func (t Token) MarshalText() ([]byte, error) { return []byte(t.redacted()), nil }
