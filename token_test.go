package momento

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func TestParseToken(t *testing.T) {
	cases := []struct {
		name, raw, kind, endpoint, header string
	}{
		{"v1", testV1Token, "v1", "https://api.cache.cell-4-us-west-2-1.prod.a.momentohq.com", "inner.jwt.key"},
		{"legacy", testLegacyToken, "legacy", "https://api.cache.cell-4-us-west-2-1.prod.a.momentohq.com", testLegacyToken},
		{"v2", testV2Token, "v2", "", testV2Token},
		{"opaque", "local-dev-token", "opaque", "", "local-dev-token"},
		{"jwt without claims we know", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln", "opaque", "", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"},
		{"base64 but not JSON", "aGVsbG8=", "opaque", "", "aGVsbG8="},
		{"surrounding whitespace (a file with a newline)", testV2Token + "\n", "v2", "", testV2Token},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := parseToken(tc.raw)
			if string(tok.Kind()) != tc.kind || tok.Endpoint() != tc.endpoint || tok.authHeader()[0] != tc.header {
				t.Fatalf("kind %q endpoint %q header %q; want %q %q %q", tok.Kind(), tok.Endpoint(), tok.authHeader()[0], tc.kind, tc.endpoint, tc.header)
			}
			if len(tok.Fingerprint()) != 8 {
				t.Errorf("fingerprint %q", tok.Fingerprint())
			}
		})
	}
}

// The token cannot be printed, whatever the route to a log or an error.
func TestTokenIsNeverFormatted(t *testing.T) {
	tok := parseToken(testV1Token)
	rg, err := resolveRegion(RegionConfig{Name: "us-west-2", Token: testV1Token}, caddy.NewReplacer())
	if err != nil {
		t.Fatal(err)
	}
	holder := struct {
		Name  string
		Token Token
		rg    *region
		rgv   region
	}{"r", tok, rg, *rg}

	var logged bytes.Buffer
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(&logged), zap.DebugLevel))
	logger.Info("token", zap.Any("token", tok), zap.Stringer("s", tok), zap.Any("holder", holder), zap.Reflect("r", holder))
	js, _ := json.Marshal(holder)

	outputs := []string{
		fmt.Sprint(tok), fmt.Sprintf("%v %+v %#v %s %q %x %X", tok, tok, tok, tok, tok, tok, tok),
		fmt.Sprintf("%v %+v %#v", holder, holder, holder), fmt.Errorf("wrapped: %v", tok).Error(),
		string(js), logged.String(),
	}
	for _, out := range outputs {
		for _, secret := range []string{testV1Token, "inner.jwt.key", "aW5uZXIuand0"} {
			if strings.Contains(out, secret) {
				t.Errorf("output reveals the token: %s", out)
			}
		}
	}
	if !strings.Contains(fmt.Sprint(tok), tok.Fingerprint()) {
		t.Errorf("redacted form %q does not carry the fingerprint", fmt.Sprint(tok))
	}
}
