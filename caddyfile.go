package momento

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("momento", parseCaddyfile)
	// Before reverse_proxy (and so before file_server): the gateway answers
	// its API paths and hands everything else on, with no `order` line.
	httpcaddyfile.RegisterDirectiveOrder("momento", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// position is where a directive stood, for errors found after the block
// is read (a route may name a region defined further down).
type position struct {
	file string
	line int
}

func at(d *caddyfile.Dispenser) position { return position{d.File(), d.Line()} }

func (p position) errorf(format string, args ...any) error {
	return fmt.Errorf("%s, at %s:%d", fmt.Sprintf(format, args...), p.file, p.line)
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	momento [<matcher>] {
//		region <name> {
//			endpoint <url>
//			token    <token>
//		}
//		default_region <name>
//		route <cache-glob> <region-name>
//		client_token strip|reject
//		timeout <duration>
//		max_item_size <size>
//		max_key_size <size>
//		breaker {
//			failures <n>
//			failure_ratio <0..1>
//			min_requests <n>
//			window <duration>
//			open_for <duration>
//			half_open_requests <n>
//		}
//		allow {
//			caches <glob...>
//			ops <get|set|delete|publish|subscribe...>
//			max_ttl <duration>
//		}
//		key_prefix <template>
//		topic_prefix <template>
//		max_message_size <size>
//		subscribe_timeout <duration>
//		region_header <name>
//		cors {
//			origins <origin...>
//			max_age <duration>
//			allow_credentials
//			headers <header...>
//		}
//	}
//
// Errors carry the file and line of the offending token.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	var routeAt []position
	var defaultAt position
	regionAt := map[string]position{}

	for d.NextBlock(0) {
		switch d.Val() {
		case "region":
			if !d.NextArg() {
				return d.ArgErr()
			}
			rc := RegionConfig{Name: d.Val()}
			if prev, dup := regionAt[rc.Name]; dup {
				return d.Errf("region %q is configured twice (first at %s:%d)", rc.Name, prev.file, prev.line)
			}
			pos := at(d)
			regionAt[rc.Name] = pos
			rc.DefinedAt = fmt.Sprintf("%s:%d", pos.file, pos.line)
			if d.NextArg() {
				return d.ArgErr()
			}
			for d.NextBlock(1) {
				switch d.Val() {
				case "endpoint":
					v, err := oneArg(d)
					if err != nil {
						return err
					}
					if !strings.Contains(v, "{") {
						if _, err := normalizeEndpoint(v); err != nil {
							return d.Errf("region %q: %v", rc.Name, err)
						}
					}
					rc.Endpoint = v
				case "token":
					v, err := oneArg(d)
					if err != nil {
						return err
					}
					rc.Token = v
				default:
					return d.Errf("unknown subdirective %q in region %q (expected endpoint or token)", d.Val(), rc.Name)
				}
			}
			if err := checkRegionLiterals(rc); err != nil {
				return pos.errorf("%v", err)
			}
			h.Regions = append(h.Regions, rc)

		case "default_region":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.DefaultRegion, defaultAt = v, at(d)

		case "route":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("route takes a cache glob and a region name, e.g. `route sessions-* eu-west-1`")
			}
			if msg := checkGlob(args[0]); msg != "" {
				return d.Err(msg)
			}
			h.Routes = append(h.Routes, Route{Cache: args[0], Region: args[1]})
			routeAt = append(routeAt, at(d))

		case "client_token":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if v != clientTokenStrip && v != clientTokenReject {
				return d.Errf("client_token %q: use strip or reject", v)
			}
			h.ClientToken = v

		case "timeout":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.Timeout = dur

		case "max_item_size":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 1<<40 {
				return d.Errf("max_item_size %q: give a positive size such as 5MiB or 1048576", v)
			}
			h.MaxItemSize = int64(size)

		case "breaker":
			if d.NextArg() {
				return d.ArgErr()
			}
			if h.Breaker == nil {
				h.Breaker = new(BreakerConfig)
			}
			if err := h.Breaker.unmarshalCaddyfile(d); err != nil {
				return err
			}

		case "allow":
			if d.NextArg() {
				return d.ArgErr()
			}
			if h.Allow == nil {
				h.Allow = new(AllowPolicy)
			}
			if err := h.Allow.unmarshalCaddyfile(d); err != nil {
				return err
			}

		case "key_prefix":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.KeyPrefix = v

		case "topic_prefix":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			if strings.Contains(v, "/") {
				return d.Errf("topic_prefix %q must not contain '/': topic names cannot", v)
			}
			h.TopicPrefix = v

		case "max_key_size":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 1<<20 {
				return d.Errf("max_key_size %q: give a positive size such as 4KiB or 1024 (at most 1MiB)", v)
			}
			h.MaxKeySize = int64(size)

		case "max_message_size":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			size, err := humanize.ParseBytes(v)
			if err != nil || size == 0 || size > 1<<30 {
				return d.Errf("max_message_size %q: give a positive size such as 4KiB or 4096", v)
			}
			h.MaxMessageSize = int64(size)

		case "region_header":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			h.RegionHeader = v

		case "subscribe_timeout":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			h.SubscribeTimeout = dur

		case "cors":
			if d.NextArg() {
				return d.ArgErr()
			}
			if h.CORS == nil {
				h.CORS = new(CORSConfig)
			}
			if err := h.CORS.unmarshalCaddyfile(d); err != nil {
				return err
			}

		default:
			return d.Errf("unknown subdirective %q in momento (expected region, default_region, route, client_token, timeout, max_item_size, breaker, allow, key_prefix, topic_prefix, max_key_size, max_message_size, subscribe_timeout, region_header or cors)", d.Val())
		}
	}

	// Cross-references, now that every region is known.
	configured := make([]string, 0, len(h.Regions))
	for _, rc := range h.Regions {
		configured = append(configured, rc.Name)
	}
	if len(configured) == 0 {
		return d.Errf("momento needs at least one region block, e.g. region us-east-1 { token {env.MOMENTO_API_KEY} }")
	}
	for i, rt := range h.Routes {
		if _, ok := regionAt[rt.Region]; !ok {
			return routeAt[i].errorf("route %q: region %q is not configured (configured: %s)", rt.Cache, rt.Region, strings.Join(configured, ", "))
		}
	}
	if h.DefaultRegion != "" {
		if _, ok := regionAt[h.DefaultRegion]; !ok {
			return defaultAt.errorf("default_region %q is not configured (configured: %s)", h.DefaultRegion, strings.Join(configured, ", "))
		}
	}
	return nil
}

// checkRegionLiterals runs the load-time region checks early, at parse
// time, when the token and endpoint hold no placeholders: then the errors
// point at the Caddyfile line. Placeholder values are checked at load.
func checkRegionLiterals(rc RegionConfig) error {
	if rc.Token == "" {
		return fmt.Errorf("region %q: no token configured: add `token {env.MOMENTO_API_KEY}` (or {file./path})", rc.Name)
	}
	if strings.Contains(rc.Token, "{") || strings.Contains(rc.Endpoint, "{") {
		return nil
	}
	_, err := resolveRegion(rc, caddy.NewReplacer())
	return err
}

func (c *BreakerConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextBlock(1) {
		name := d.Val()
		switch name {
		case "failures", "min_requests", "half_open_requests":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil || n == 0 {
				return d.Errf("breaker %s %q: give a positive whole number", name, v)
			}
			switch name {
			case "failures":
				c.Failures = uint32(n)
			case "min_requests":
				c.MinRequests = uint32(n)
			default:
				c.HalfOpenRequests = uint32(n)
			}
		case "failure_ratio":
			v, err := oneArg(d)
			if err != nil {
				return err
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0 && f <= 1) {
				return d.Errf("breaker failure_ratio %q: give a number greater than 0 and at most 1, e.g. 0.5", v)
			}
			c.FailureRatio = f
		case "window", "open_for":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			if name == "window" {
				c.Window = dur
			} else {
				c.OpenFor = dur
			}
		default:
			return d.Errf("unknown subdirective %q in breaker (expected failures, failure_ratio, min_requests, window, open_for or half_open_requests)", name)
		}
	}
	return nil
}

func (p *AllowPolicy) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextBlock(1) {
		switch d.Val() {
		case "caches":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("allow caches needs at least one cache glob, e.g. caches public-*")
			}
			for _, g := range args {
				if msg := checkGlob(g); msg != "" {
					return d.Errf("allow caches: %s", msg)
				}
			}
			p.Caches = append(p.Caches, args...)
		case "ops":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("allow ops needs at least one of %s", strings.Join(opNames, ", "))
			}
			for _, o := range args {
				if msg := checkOp(o); msg != "" {
					return d.Errf("allow ops: %s", msg)
				}
			}
			p.Ops = append(p.Ops, args...)
		case "max_ttl":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			if dur < caddy.Duration(time.Second) {
				return d.Errf("max_ttl %s is under a second; Momento TTLs are whole seconds", time.Duration(dur))
			}
			p.MaxTTL = dur
		default:
			return d.Errf("unknown subdirective %q in allow (expected caches, ops or max_ttl)", d.Val())
		}
	}
	return nil
}

func (c *CORSConfig) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	for d.NextBlock(1) {
		switch d.Val() {
		case "origins":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("cors origins needs at least one origin, e.g. origins https://app.example.com")
			}
			for _, o := range args {
				if msg := checkOrigin(o); msg != "" {
					return d.Errf("cors: %s", msg)
				}
			}
			c.Origins = append(c.Origins, args...)
		case "max_age":
			dur, err := durationArg(d)
			if err != nil {
				return err
			}
			c.MaxAge = dur
		case "allow_credentials":
			if d.NextArg() {
				return d.ArgErr()
			}
			c.AllowCredentials = true
		case "headers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("cors headers needs at least one header name")
			}
			c.Headers = append(c.Headers, args...)
		default:
			return d.Errf("unknown subdirective %q in cors (expected origins, max_age, allow_credentials or headers)", d.Val())
		}
	}
	if len(c.Origins) == 0 {
		return d.Errf("cors needs an origins line, e.g. origins https://app.example.com")
	}
	return nil
}

// oneArg reads exactly one argument for the current subdirective.
func oneArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s needs a value", name)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s takes one value, got more", name)
	}
	return v, nil
}

// durationArg reads one positive duration ("10s", "1m30s", "2d").
func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s %q: give a positive duration such as 500ms, 10s or 1m", name, v)
	}
	return caddy.Duration(dur), nil
}

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
