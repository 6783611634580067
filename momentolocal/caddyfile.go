package momentolocal

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/dustin/go-humanize"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("momento_local", parseCaddyfile)
	// It answers requests itself, like reverse_proxy, and should be able to
	// sit in front of a reverse_proxy for paths it does not serve.
	httpcaddyfile.RegisterDirectiveOrder("momento_local", httpcaddyfile.Before, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	if err := m.UnmarshalCaddyfile(h.Dispenser); err != nil {
		return nil, err
	}
	return m, nil
}

// subdirective is one line the momento_local block accepts.
type subdirective struct {
	name string
	// list is set for subdirectives whose arguments add up when repeated;
	// any other given twice is an error, since the second would silently
	// override the first.
	list  bool
	parse func(h *Handler, d *caddyfile.Dispenser) error
}

// subdirectives are in the order the syntax below documents them.
var subdirectives = []subdirective{
	{name: "name", parse: func(h *Handler, d *caddyfile.Dispenser) error { return oneArg(d, &h.Name) }},
	{name: "token", parse: func(h *Handler, d *caddyfile.Dispenser) error { return oneArg(d, &h.Token) }},
	{name: "caches", list: true, parse: func(h *Handler, d *caddyfile.Dispenser) error {
		names := d.RemainingArgs()
		if len(names) == 0 {
			return d.ArgErr()
		}
		h.Caches = append(h.Caches, names...)
		return nil
	}},
	{name: "max_item_size", parse: func(h *Handler, d *caddyfile.Dispenser) error { return sizeArg(d, &h.MaxItemSize) }},
	{name: "max_memory", parse: func(h *Handler, d *caddyfile.Dispenser) error { return sizeArg(d, &h.MaxMemory) }},
	{name: "max_message_size", parse: func(h *Handler, d *caddyfile.Dispenser) error { return sizeArg(d, &h.MaxMessageSize) }},
	{name: "topic_buffer", parse: func(h *Handler, d *caddyfile.Dispenser) error { return countArg(d, "messages", &h.TopicBuffer) }},
	{name: "latency", parse: func(h *Handler, d *caddyfile.Dispenser) error { return durationArg(d, &h.Latency) }},
	{name: "max_ops_per_second", parse: func(h *Handler, d *caddyfile.Dispenser) error {
		return countArg(d, "operations", &h.MaxOpsPerSecond)
	}},
	{name: "max_publishes_per_second", parse: func(h *Handler, d *caddyfile.Dispenser) error {
		return countArg(d, "publishes", &h.MaxPublishesPerSecond)
	}},
	{name: "max_subscriptions", parse: func(h *Handler, d *caddyfile.Dispenser) error {
		return countArg(d, "subscriptions", &h.MaxSubscriptions)
	}},
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	momento_local [<matcher>] {
//	    name             <name>
//	    token            <token>
//	    caches           <names...>
//	    max_item_size    <size>
//	    max_memory       <size>
//	    max_message_size <size>
//	    topic_buffer     <messages>
//
//	    # Simulating a real region; all off by default.
//	    latency                  <duration>
//	    max_ops_per_second       <operations>
//	    max_publishes_per_second <publishes>
//	    max_subscriptions        <subscriptions>
//	}
//
// caches may be repeated; every other subdirective may be given once.
// Sizes are like 5MiB, 1MB or plain bytes; durations like 10ms.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	firstAt := map[string]string{}
	for d.NextBlock(0) {
		name := d.Val()
		i := slices.IndexFunc(subdirectives, func(s subdirective) bool { return s.name == name })
		if i < 0 {
			valid := make([]string, len(subdirectives))
			for i, s := range subdirectives {
				valid[i] = s.name
			}
			return d.Errf("unrecognized momento_local subdirective '%s' (valid: %s)", name, strings.Join(valid, ", "))
		}
		sub := subdirectives[i]
		if !sub.list {
			if at, ok := firstAt[name]; ok {
				return d.Errf("%s is already given at %s; give it once", name, at)
			}
			firstAt[name] = fmt.Sprintf("%s:%d", d.File(), d.Line())
		}
		if err := sub.parse(h, d); err != nil {
			return err
		}
	}
	return nil
}

// oneArg reads the one argument of the current subdirective.
func oneArg(d *caddyfile.Dispenser, dst *string) error {
	if !d.AllArgs(dst) {
		return d.ArgErr()
	}
	return nil
}

// sizeArg reads the one size argument of the current subdirective.
func sizeArg(d *caddyfile.Dispenser, dst *int64) error {
	name := d.Val()
	var arg string
	if err := oneArg(d, &arg); err != nil {
		return err
	}
	size, err := humanize.ParseBytes(arg)
	if err != nil {
		return d.Errf("parsing %s: %v", name, err)
	}
	if size == 0 || size > math.MaxInt64 {
		return d.Errf("%s must be between 1 byte and 8EiB, got %s", name, arg)
	}
	*dst = int64(size)
	return nil
}

// durationArg reads the one duration argument of the current
// subdirective, 0 or more.
func durationArg(d *caddyfile.Dispenser, dst *caddy.Duration) error {
	name := d.Val()
	var arg string
	if err := oneArg(d, &arg); err != nil {
		return err
	}
	dur, err := caddy.ParseDuration(arg)
	if err != nil || dur < 0 {
		return d.Errf("%s must be a duration such as 10ms, got %s", name, arg)
	}
	*dst = caddy.Duration(dur)
	return nil
}

// countArg reads the one argument of the current subdirective, a whole
// number of unit, 1 or more.
func countArg(d *caddyfile.Dispenser, unit string, dst *int) error {
	name := d.Val()
	var arg string
	if err := oneArg(d, &arg); err != nil {
		return err
	}
	n, err := strconv.Atoi(arg)
	if err != nil || n <= 0 {
		return d.Errf("%s must be a whole number of %s, 1 or more, got %s", name, unit, arg)
	}
	*dst = n
	return nil
}
