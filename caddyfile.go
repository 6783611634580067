package momento

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
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
	httpcaddyfile.RegisterGlobalOption("momento", parseGlobalOption)
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	// Regions of the global options, so references to them can be checked
	// now, with their line.
	m.appRegions = []string{}
	if opt, ok := h.Option("momento").(httpcaddyfile.App); ok {
		var app App
		if err := json.Unmarshal(opt.Value, &app); err != nil {
			return nil, err
		}
		for _, rc := range app.Regions {
			m.appRegions = append(m.appRegions, rc.Name)
		}
	}
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// parseGlobalOption reads the global `momento` options, the momento app:
//
//	{
//		momento {
//			region <name> {
//				endpoint <url>
//				token    <token>
//				breaker { … }
//				max_subscriptions <n>
//				max_ops_per_second <n>
//				max_publishes_per_second <n>
//			}
//			max_waiting <n>
//			max_waiting_per_client <n>
//			max_ops_per_client <n>
//			topics {
//				hub on|off
//				buffer <messages>
//				buffer_size <size>
//				linger <duration>
//				heartbeat <duration>
//			}
//		}
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(App)
	d.Next() // the option's name
	b := newBlock(d)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "region":
			rc, err := b.region(fmt.Sprintf("regions[%d]", len(app.Regions)))
			if err != nil {
				return nil, err
			}
			app.Regions = append(app.Regions, rc)
		case "max_waiting":
			if err := b.countArg("max_waiting", &app.MaxWaiting); err != nil {
				return nil, err
			}
		case "max_waiting_per_client":
			if err := b.countArg("max_waiting_per_client", &app.MaxWaitingPerClient); err != nil {
				return nil, err
			}
		case "max_ops_per_client":
			if err := b.countArg("max_ops_per_client", &app.MaxOpsPerClient); err != nil {
				return nil, err
			}
		case "topics":
			if err := b.once("topics"); err != nil {
				return nil, err
			}
			app.Topics = new(TopicsConfig)
			if err := b.topics(app.Topics); err != nil {
				return nil, err
			}
		default:
			return nil, d.Errf("unknown subdirective %q in the global momento options (expected region, max_waiting, max_waiting_per_client, max_ops_per_client or topics)", d.Val())
		}
	}
	if err := b.explain(app.Validate()); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "momento", Value: caddyconfig.JSON(app, nil)}, nil
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	momento [<matcher>] {
//		region <name> {
//			endpoint <url>
//			token    <token>
//			breaker { … }
//			max_subscriptions <n>
//			max_ops_per_second <n>
//			max_publishes_per_second <n>
//		}
//		region <name>            # a region of the global momento options
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
//			probe_upload_wait <duration>
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
//		coalesce on|off
//		local_cache {
//			max_age <duration>
//			max_size <size>
//			stale_if_error <duration>
//		}
//		cors {
//			origins <origin...>
//			max_age <duration>
//			allow_credentials
//			headers <header...>
//		}
//	}
//
// It reads the syntax; Validate checks the meaning, and its errors get the
// file and line of the subdirective they are about.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	b := newBlock(d)
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		var err error
		switch name := d.Val(); name {
		case "region":
			var rc RegionConfig
			if rc, err = b.region(fmt.Sprintf("regions[%d]", len(h.Regions))); err == nil {
				h.Regions = append(h.Regions, rc)
			}
		case "route":
			b.at(fmt.Sprintf("routes[%d]", len(h.Routes)))
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("route takes a cache glob and a region name, e.g. `route sessions-* eu-west-1`")
			}
			h.Routes = append(h.Routes, Route{Cache: args[0], Region: args[1]})
		case "default_region":
			err = b.stringArg(name, &h.DefaultRegion)
		case "client_token":
			err = b.stringArg(name, &h.ClientToken)
		case "key_prefix":
			err = b.stringArg(name, &h.KeyPrefix)
		case "topic_prefix":
			err = b.stringArg(name, &h.TopicPrefix)
		case "region_header":
			err = b.stringArg(name, &h.RegionHeader)
		case "timeout":
			err = b.durationArg(name, &h.Timeout)
		case "subscribe_timeout":
			err = b.durationArg(name, &h.SubscribeTimeout)
		case "max_item_size":
			err = b.sizeArg(name, &h.MaxItemSize, 1<<40, "5MiB or 1048576")
		case "max_key_size":
			err = b.sizeArg(name, &h.MaxKeySize, 1<<20, "4KiB or 1024")
		case "max_message_size":
			err = b.sizeArg(name, &h.MaxMessageSize, 1<<30, "4KiB or 4096")
		case "breaker":
			if err = b.once(name); err == nil {
				h.Breaker = new(BreakerConfig)
				err = b.breaker(name, h.Breaker)
			}
		case "allow":
			if err = b.once(name); err == nil {
				h.Allow = new(AllowPolicy)
				err = b.allow(h.Allow)
			}
		case "cors":
			if err = b.once(name); err == nil {
				h.CORS = new(CORSConfig)
				err = b.cors(h.CORS)
			}
		case "coalesce":
			err = b.stringArg(name, &h.Coalesce)
		case "local_cache":
			if err = b.once(name); err == nil {
				h.LocalCache = new(LocalCacheConfig)
				err = b.localCache(h.LocalCache)
			}
		default:
			return d.Errf("unknown subdirective %q in momento (expected region, default_region, route, client_token, timeout, max_item_size, breaker, allow, key_prefix, topic_prefix, max_key_size, max_message_size, subscribe_timeout, region_header, cors, coalesce or local_cache)", name)
		}
		if err != nil {
			return err
		}
	}
	return b.explain(h.Validate())
}

// block reads one Caddyfile block: it remembers where each subdirective
// stood, so that errors found by Validate name its line, and refuses a
// setting given twice.
type block struct {
	d *caddyfile.Dispenser
	// start is the directive's own token.
	start caddyfile.Token
	// pos maps the config's field names ("timeout", "routes[2]",
	// "regions[0].breaker.window") to the token that set them.
	pos map[string]caddyfile.Token
}

// newBlock starts reading the directive the dispenser is on.
func newBlock(d *caddyfile.Dispenser) *block {
	return &block{d: d, start: d.Token(), pos: map[string]caddyfile.Token{}}
}

// at records that the current subdirective sets field.
func (b *block) at(field string) { b.pos[field] = b.d.Token() }

// once records field, refusing it if it was set before.
func (b *block) once(field string) error {
	if first, ok := b.pos[field]; ok {
		return b.d.Errf("%s is given twice (first at %s:%d): keep one", b.d.Val(), first.File, first.Line)
	}
	b.at(field)
	return nil
}

// explain adds to a Validate error the file and line of the subdirective
// it is about (keeping Caddy's import chain), or of the whole directive.
func (b *block) explain(err error) error {
	if err == nil {
		return nil
	}
	tok := b.start
	var fe fieldError
	if errors.As(err, &fe) {
		for field := fe.field; field != ""; field = parentField(field) {
			if t, ok := b.pos[field]; ok {
				tok = t
				break
			}
		}
	}
	d := caddyfile.NewDispenser([]caddyfile.Token{tok})
	d.Next()
	return d.Err(err.Error())
}

// parentField is the field that holds field: "regions[0].breaker" for
// "regions[0].breaker.window", "regions[0]" for "regions[0].breaker",
// "routes" for "routes[1]".
func parentField(field string) string {
	if i := strings.LastIndexAny(field, ".["); i > 0 {
		return field[:i]
	}
	return ""
}

// stringArg reads the one value of a setting that may be given once.
func (b *block) stringArg(field string, dst *string) error {
	_, v, err := b.value(field)
	*dst = v
	return err
}

// value reads the one value of a setting that may be given once, and the
// setting's name as written.
func (b *block) value(field string) (name, v string, err error) {
	if err := b.once(field); err != nil {
		return "", "", err
	}
	name = b.d.Val()
	v, err = oneArg(b.d)
	return name, v, err
}

// durationArg reads one positive duration ("10s", "1m30s", "2d").
func (b *block) durationArg(field string, dst *caddy.Duration) error {
	name, v, err := b.value(field)
	if err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil || dur <= 0 {
		return b.d.Errf("%s %q: give a positive duration such as 500ms, 10s or 1m", name, v)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// sizeArg reads one positive size ("5MiB", "4KiB", "1048576") up to max.
func (b *block) sizeArg(field string, dst *int64, max uint64, example string) error {
	name, v, err := b.value(field)
	if err != nil {
		return err
	}
	size, err := humanize.ParseBytes(v)
	if err != nil || size == 0 || size > max {
		return b.d.Errf("%s %q: give a positive size such as %s (at most %s)", name, v, example, humanize.IBytes(max))
	}
	*dst = int64(size)
	return nil
}

// countArg reads one positive whole number.
func (b *block) countArg(field string, dst *int) error {
	name, v, err := b.value(field)
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		return b.d.Errf("%s %q: give a positive whole number", name, v)
	}
	*dst = n
	return nil
}

// listArg reads the values of a list setting, which may be repeated.
func (b *block) listArg(field, need string, dst *[]string) error {
	b.at(field)
	args := b.d.RemainingArgs()
	if len(args) == 0 {
		return b.d.Errf("%s needs %s", field[strings.LastIndexByte(field, '.')+1:], need)
	}
	*dst = append(*dst, args...)
	return nil
}

// region reads `region <name> [{ endpoint, token, breaker }]` as field.
func (b *block) region(field string) (RegionConfig, error) {
	d := b.d
	b.at(field)
	if !d.NextArg() {
		return RegionConfig{}, d.Errf("region needs a name, e.g. region us-east-1 { token {env.MOMENTO_API_KEY} }")
	}
	rc := RegionConfig{Name: d.Val(), DefinedAt: fmt.Sprintf("%s:%d", d.File(), d.Line())}
	if d.NextArg() {
		return rc, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch name := d.Val(); name {
		case "endpoint":
			err = b.stringArg(field+".endpoint", &rc.Endpoint)
		case "token":
			err = b.stringArg(field+".token", &rc.Token)
		case "breaker":
			if err = b.once(field + ".breaker"); err == nil {
				rc.Breaker = new(BreakerConfig)
				err = b.breaker(field+".breaker", rc.Breaker)
			}
		case "max_subscriptions":
			err = b.countArg(field+".max_subscriptions", &rc.MaxSubscriptions)
		case "max_ops_per_second":
			err = b.countArg(field+".max_ops_per_second", &rc.MaxOpsPerSecond)
		case "max_publishes_per_second":
			err = b.countArg(field+".max_publishes_per_second", &rc.MaxPublishesPerSecond)
		default:
			return rc, d.Errf("unknown subdirective %q in region %q (expected endpoint, token, breaker, max_subscriptions, max_ops_per_second or max_publishes_per_second)", name, rc.Name)
		}
		if err != nil {
			return rc, err
		}
	}
	return rc, nil
}

// breaker reads a breaker block as field.
func (b *block) breaker(field string, c *BreakerConfig) error {
	d := b.d
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		switch name {
		case "failures", "min_requests", "half_open_requests":
			_, v, err := b.value(field + "." + name)
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
			_, v, err := b.value(field + "." + name)
			if err != nil {
				return err
			}
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || !(f > 0 && f <= 1) {
				return d.Errf("breaker failure_ratio %q: give a number greater than 0 and at most 1, e.g. 0.5", v)
			}
			c.FailureRatio = f
		case "window":
			if err := b.durationArg(field+".window", &c.Window); err != nil {
				return err
			}
		case "open_for":
			if err := b.durationArg(field+".open_for", &c.OpenFor); err != nil {
				return err
			}
		case "probe_upload_wait":
			if err := b.durationArg(field+".probe_upload_wait", &c.ProbeUploadWait); err != nil {
				return err
			}
		default:
			return d.Errf("unknown subdirective %q in breaker (expected failures, failure_ratio, min_requests, window, open_for, half_open_requests or probe_upload_wait)", name)
		}
	}
	return nil
}

// settings reads a block of settings of what (e.g. "allow"), each read by
// its own function.
func (b *block) settings(what string, read map[string]func() error) error {
	d := b.d
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		f, ok := read[d.Val()]
		if !ok {
			names := slices.Sorted(maps.Keys(read))
			return d.Errf("unknown subdirective %q in %s (expected %s or %s)", d.Val(), what,
				strings.Join(names[:len(names)-1], ", "), names[len(names)-1])
		}
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

func (b *block) localCache(c *LocalCacheConfig) error {
	return b.settings("local_cache", map[string]func() error{
		"max_age":        func() error { return b.durationArg("local_cache.max_age", &c.MaxAge) },
		"max_size":       func() error { return b.sizeArg("local_cache.max_size", &c.MaxSize, 1<<40, "64MiB or 1048576") },
		"stale_if_error": func() error { return b.durationArg("local_cache.stale_if_error", &c.StaleIfError) },
	})
}

func (b *block) topics(c *TopicsConfig) error {
	return b.settings("topics", map[string]func() error{
		"hub":         func() error { return b.stringArg("topics.hub", &c.Hub) },
		"buffer":      func() error { return b.countArg("topics.buffer", &c.Buffer) },
		"buffer_size": func() error { return b.sizeArg("topics.buffer_size", &c.BufferSize, 1<<30, "1MiB or 65536") },
		"linger":      func() error { return b.durationArg("topics.linger", &c.Linger) },
		"heartbeat":   func() error { return b.durationArg("topics.heartbeat", &c.Heartbeat) },
	})
}

func (b *block) allow(p *AllowPolicy) error {
	return b.settings("allow", map[string]func() error{
		"caches": func() error {
			return b.listArg("allow.caches", "at least one cache glob, e.g. caches public-*", &p.Caches)
		},
		"ops": func() error {
			return b.listArg("allow.ops", "at least one of get, set, delete, publish, subscribe", &p.Ops)
		},
		"max_ttl": func() error { return b.durationArg("allow.max_ttl", &p.MaxTTL) },
	})
}

func (b *block) cors(c *CORSConfig) error {
	return b.settings("cors", map[string]func() error{
		"origins": func() error {
			return b.listArg("cors.origins", "at least one origin, e.g. origins https://app.example.com", &c.Origins)
		},
		"max_age": func() error { return b.durationArg("cors.max_age", &c.MaxAge) },
		"allow_credentials": func() error {
			c.AllowCredentials = true
			if err := b.once("cors.allow_credentials"); err != nil {
				return err
			}
			if b.d.NextArg() {
				return b.d.ArgErr()
			}
			return nil
		},
		"headers": func() error { return b.listArg("cors.headers", "at least one header name", &c.Headers) },
	})
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

// Interface guard
var _ caddyfile.Unmarshaler = (*Handler)(nil)
