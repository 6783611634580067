package momento

import (
	"errors"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// prefixTemplate is a compiled key_prefix or topic_prefix template: literal
// text and Caddy placeholders, expanded per request.
//
// It isolates users from one another as long as every placeholder is
// followed by a separator: a literal character that escaping never emits
// (anything but a letter, a digit or '%'). Placeholder values are escaped
// so that they contain neither that separator nor anything that could
// spell it, so the first separator after a value ends it: two users' ids
// never give one prefix, and no key one user chooses reaches another
// user's namespace. validatePrefix refuses templates without separators.
type prefixTemplate struct {
	directive string // key_prefix or topic_prefix, for messages
	template  string
	// static is true when the template has no placeholders: the replacer
	// is then never consulted on the hot path.
	static bool
	// seps holds, for each placeholder in order, the separator after it.
	seps []byte
}

func compilePrefix(directive, template string) *prefixTemplate {
	if template == "" {
		return nil
	}
	pt := &prefixTemplate{directive: directive, template: template, static: !strings.Contains(template, "{")}
	for _, ph := range placeholders(template) {
		pt.seps = append(pt.seps, template[ph.end])
	}
	return pt
}

// placeholder is where a {placeholder} stands in a template.
type placeholder struct{ start, end int } // end is just past its '}'

// placeholders finds the {…} placeholders of a template as Caddy's
// replacer does (a backslash escapes a brace).
func placeholders(template string) []placeholder {
	var out []placeholder
	for i := 0; i < len(template); i++ {
		switch template[i] {
		case '\\':
			i++
		case '{':
			if j := strings.IndexByte(template[i:], '}'); j > 0 {
				out = append(out, placeholder{i, i + j + 1})
				i += j
			}
		}
	}
	return out
}

// validatePrefix reports a template whose placeholders could let one
// user's value run into another's namespace, and says what to write.
func validatePrefix(directive, template string) error {
	phs := placeholders(template)
	for i, ph := range phs {
		name := template[ph.start:ph.end]
		next := i+1 < len(phs) && phs[i+1].start == ph.end
		if ph.end == len(template) || next || !isSeparator(template[ph.end]) {
			return fieldErrorf(directive, "%s %q: %s must be followed by a separator, such as ':' or '/' (write %q): without one, user \"alic\" with key \"ecart\" would read user \"alice\"'s key \"cart\"",
				directive, template, name, template[:ph.end]+":"+template[ph.end:])
		}
	}
	return nil
}

// isSeparator reports whether escapeValue never emits b.
func isSeparator(b byte) bool {
	return !('A' <= b && b <= 'Z' || 'a' <= b && b <= 'z' || '0' <= b && b <= '9' || b == '%')
}

// escapeValue escapes a placeholder's value as url.QueryEscape does
// (letters, digits and -._~ stay, a space becomes '+', the rest %XX), and
// also escapes sep, the separator that follows the value in the template.
// For the usual separators (':', '/') that is exactly QueryEscape, so
// prefixes stay what they were before this rule.
func escapeValue(v string, sep byte) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c != sep && ('A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~'):
			b.WriteByte(c)
		case c == ' ' && sep != '+':
			b.WriteByte('+')
		default:
			b.WriteByte('%')
			b.WriteByte(hex[c>>4])
			b.WriteByte(hex[c&15])
		}
	}
	return b.String()
}

var errEmptyPlaceholder = errors.New("empty placeholder in a prefix template")

// expand returns the prefix for this request. A placeholder that is
// unknown or empty for this request (typically: no authenticated user)
// refuses the request; it never falls back to the shared namespace.
func (pt *prefixTemplate) expand(r *http.Request) (string, *refusal) {
	if pt.static {
		return pt.template, nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	if repl == nil {
		repl = caddy.NewReplacer()
	}
	var empty string
	n := 0
	expanded, err := repl.ReplaceFunc(pt.template, func(name string, val any) (any, error) {
		s := caddy.ToString(val)
		if s == "" {
			empty = name
			return nil, errEmptyPlaceholder
		}
		sep := byte(':')
		if n < len(pt.seps) {
			sep = pt.seps[n]
		}
		n++
		return escapeValue(s, sep), nil
	})
	if err != nil {
		what := "a placeholder"
		if empty != "" {
			what = "{" + empty + "}"
		}
		return "", refuse(http.StatusForbidden, pt.directive+" needs "+what+", which is empty for this request: authenticate first")
	}
	return expanded, nil
}

// apply puts the prefix in front of the call's key (key_prefix) or topic
// (topic_prefix). Keys are bytes: for key_base64 too, the prefix goes in
// front of the decoded key.
func (pt *prefixTemplate) apply(c *call, r *http.Request) *refusal {
	if pt == nil {
		return nil
	}
	prefix, rf := pt.expand(r)
	if rf != nil {
		return rf
	}
	if c.api == apiTopics {
		c.topic = prefix + c.topic
	} else {
		c.key = prefix + c.key
	}
	return nil
}
