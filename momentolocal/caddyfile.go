package momentolocal

import (
	"math"
	"strconv"

	"github.com/dustin/go-humanize"

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

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. Syntax:
//
//	momento_local [<matcher>] {
//	    token            <token>
//	    caches           <names...>
//	    max_item_size    <size>
//	    max_memory       <size>
//	    max_message_size <size>
//	    topic_buffer     <messages>
//	}
//
// caches may be repeated. Sizes are like 5MiB, 1MB or plain bytes.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "token":
			if h.Token != "" {
				return d.Err("token already specified")
			}
			if !d.AllArgs(&h.Token) {
				return d.ArgErr()
			}
		case "caches":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.ArgErr()
			}
			h.Caches = append(h.Caches, names...)
		case "max_item_size":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			h.MaxItemSize = size
		case "max_memory":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			h.MaxMemory = size
		case "max_message_size":
			size, err := parseSize(d)
			if err != nil {
				return err
			}
			h.MaxMessageSize = size
		case "topic_buffer":
			var arg string
			if !d.AllArgs(&arg) {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(arg)
			if err != nil || n <= 0 {
				return d.Errf("topic_buffer must be a whole number of messages, 1 or more, got %s", arg)
			}
			h.TopicBuffer = n
		default:
			return d.Errf("unrecognized momento_local subdirective '%s'", d.Val())
		}
	}
	return nil
}

// parseSize reads the one size argument of the current subdirective.
func parseSize(d *caddyfile.Dispenser) (int64, error) {
	name := d.Val()
	var arg string
	if !d.AllArgs(&arg) {
		return 0, d.ArgErr()
	}
	size, err := humanize.ParseBytes(arg)
	if err != nil {
		return 0, d.Errf("parsing %s: %v", name, err)
	}
	if size == 0 || size > math.MaxInt64 {
		return 0, d.Errf("%s must be between 1 byte and 8EiB, got %s", name, arg)
	}
	return int64(size), nil
}
