package momento

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// fieldError is a configuration error about one field, named as the
// config names it ("routes[1]", "default_region", "breaker.window"), so
// that the Caddyfile adapter can add the file and line that set it.
type fieldError struct {
	field string
	msg   string
}

func (e fieldError) Error() string { return e.msg }

func fieldErrorf(field, format string, args ...any) error {
	return fieldError{field: field, msg: fmt.Sprintf(format, args...)}
}

// Validate checks the handler's configuration without resolving
// placeholders. It is the only place that checks it: the Caddyfile adapter
// runs it too, adding the line of the offending subdirective, and a
// placeholder's value is checked when the config loads.
func (h *Handler) Validate() error {
	if err := validateRegions(h.Regions, "regions", h.appRegions, false); err != nil {
		return err
	}
	known := h.appRegions
	if len(h.Regions) > 0 {
		known = nil
		for _, rc := range h.Regions {
			known = append(known, rc.Name)
		}
	}
	if len(known) == 0 && h.appRegions != nil {
		return fieldErrorf("", "momento needs at least one region: add a region block, e.g. region us-east-1 { token {env.MOMENTO_API_KEY} }, here or in the global momento options")
	}
	configured := strings.Join(known, ", ")
	for i, rt := range h.Routes {
		field := fmt.Sprintf("routes[%d]", i)
		if msg := globProblem(rt.Cache); msg != "" {
			return fieldErrorf(field, "route: %s", msg)
		}
		if known != nil && !slices.Contains(known, rt.Region) {
			return fieldErrorf(field, "route %q: region %q is not configured (configured: %s)", rt.Cache, rt.Region, configured)
		}
	}
	if h.DefaultRegion != "" && known != nil && !slices.Contains(known, h.DefaultRegion) {
		return fieldErrorf("default_region", "default_region %q is not configured (configured: %s)", h.DefaultRegion, configured)
	}
	switch h.ClientToken {
	case "", clientTokenStrip, clientTokenReject:
	default:
		return fieldErrorf("client_token", "client_token %q: use strip or reject", h.ClientToken)
	}
	for _, d := range []struct {
		field string
		v     caddy.Duration
	}{{"timeout", h.Timeout}, {"subscribe_timeout", h.SubscribeTimeout}} {
		if d.v < 0 {
			return fieldErrorf(d.field, "%s %s must be positive", d.field, time.Duration(d.v))
		}
	}
	for _, s := range []struct {
		field string
		v     int64
	}{{"max_item_size", h.MaxItemSize}, {"max_key_size", h.MaxKeySize}, {"max_message_size", h.MaxMessageSize}} {
		if s.v < 0 {
			return fieldErrorf(s.field, "%s %d must be positive", s.field, s.v)
		}
	}
	if err := validatePrefix("key_prefix", h.KeyPrefix); err != nil {
		return err
	}
	if err := validatePrefix("topic_prefix", h.TopicPrefix); err != nil {
		return err
	}
	if strings.Contains(h.TopicPrefix, "/") {
		return fieldErrorf("topic_prefix", "topic_prefix %q must not contain '/': topic names cannot", h.TopicPrefix)
	}
	if h.Breaker != nil && len(known) > 0 && !slices.ContainsFunc(h.Regions, func(rc RegionConfig) bool { return !rc.isReference() }) {
		return fieldErrorf("breaker", "breaker: this handler defines no region of its own, so these settings would apply to none: set them in the region's block in the global momento options")
	}
	if h.Coalesce != "" && h.Coalesce != "on" && h.Coalesce != "off" {
		return fieldErrorf("coalesce", "coalesce %q: use on or off", h.Coalesce)
	}
	if err := h.LocalCache.validate(); err != nil {
		return err
	}
	if err := h.Breaker.validate("breaker"); err != nil {
		return err
	}
	if err := h.Allow.validate(); err != nil {
		return err
	}
	return h.CORS.validate()
}

// validateRegions checks region definitions and references under field
// (e.g. "regions"): each names a region once, and a reference names a
// region of the global options (globals; nil when they are not known, in
// which case references are checked when the config loads). In the global
// options themselves (inApp), every region must be a definition.
// Definitions whose token and endpoint hold no placeholders are resolved
// now, so a token for another region is refused here rather than at load.
func validateRegions(regions []RegionConfig, field string, globals []string, inApp bool) error {
	var names []string
	for i, rc := range regions {
		f := fmt.Sprintf("%s[%d]", field, i)
		switch {
		case rc.Name == "":
			return fieldErrorf(f, "a region needs a name, e.g. region us-east-1 { token {env.MOMENTO_API_KEY} }")
		case slices.Contains(names, rc.Name):
			return fieldErrorf(f, "region %q is configured twice", rc.Name)
		}
		names = append(names, rc.Name)
		if rc.isReference() {
			if inApp || globals != nil && !slices.Contains(globals, rc.Name) {
				where := ", or define the region in the global momento options"
				if inApp {
					where = ""
				}
				return fieldErrorf(f, "region %q: no token configured: add `token {env.MOMENTO_API_KEY}` (or {file./path}) to it%s", rc.Name, where)
			}
			continue
		}
		if err := rc.Breaker.validate(f + ".breaker"); err != nil {
			return err
		}
		if rc.MaxSubscriptions < 0 {
			return fieldErrorf(f+".max_subscriptions", "region %q: max_subscriptions %d must be positive", rc.Name, rc.MaxSubscriptions)
		}
		if rc.MaxOpsPerSecond < 0 {
			return fieldErrorf(f+".max_ops_per_second", "region %q: max_ops_per_second %d must be positive", rc.Name, rc.MaxOpsPerSecond)
		}
		if rc.MaxPublishesPerSecond < 0 {
			return fieldErrorf(f+".max_publishes_per_second", "region %q: max_publishes_per_second %d must be positive", rc.Name, rc.MaxPublishesPerSecond)
		}
		if rc.Endpoint != "" && !strings.Contains(rc.Endpoint, "{") {
			if _, err := normalizeEndpoint(rc.Endpoint); err != nil {
				return fieldErrorf(f+".endpoint", "region %q: %v", rc.Name, err)
			}
		}
		if !strings.Contains(rc.Token, "{") && !strings.Contains(rc.Endpoint, "{") {
			if _, err := resolveRegion(rc, caddy.NewReplacer()); err != nil {
				return fieldError{field: f, msg: err.Error()}
			}
		}
	}
	return nil
}
