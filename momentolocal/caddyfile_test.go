package momentolocal

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	// header must be registered to adapt Caddyfiles that use it.
	_ "github.com/caddyserver/caddy/v2/modules/caddyhttp/headers"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name    string
		input   string
		want    Handler
		wantErr string // a substring; includes the file and line
	}{
		{
			name:  "bare",
			input: `momento_local`,
			want:  Handler{},
		},
		{
			name:  "empty block",
			input: "momento_local {\n}",
			want:  Handler{},
		},
		{
			name: "every subdirective",
			input: `momento_local {
				token t0ken
				caches a b
				caches c
				max_item_size 1MiB
				max_memory 64MB
				max_message_size 2KiB
				topic_buffer 16
				name us-east-1
				latency 10ms
				max_ops_per_second 100
				max_publishes_per_second 10
				max_subscriptions 100
			}`,
			want: Handler{Token: "t0ken", Caches: []string{"a", "b", "c"}, MaxItemSize: 1 << 20, MaxMemory: 64_000_000,
				MaxMessageSize: 2048, TopicBuffer: 16, Name: "us-east-1", Latency: caddy.Duration(10 * time.Millisecond),
				MaxOpsPerSecond: 100, MaxPublishesPerSecond: 10, MaxSubscriptions: 100},
		},
		{
			name:    "bad latency",
			input:   "momento_local {\n\tlatency soon\n}",
			wantErr: "latency must be a duration such as 10ms, got soon, at Testfile:2",
		},
		{
			name:    "negative latency",
			input:   "momento_local {\n\tlatency -1s\n}",
			wantErr: "latency must be a duration such as 10ms, got -1s, at Testfile:2",
		},
		{
			name:    "zero max_ops_per_second",
			input:   "momento_local {\n\tmax_ops_per_second 0\n}",
			wantErr: "max_ops_per_second must be a whole number of operations, 1 or more, got 0, at Testfile:2",
		},
		{
			name:    "max_subscriptions with a unit",
			input:   "momento_local {\n\tmax_subscriptions 1k\n}",
			wantErr: "max_subscriptions must be a whole number of subscriptions, 1 or more, got 1k, at Testfile:2",
		},
		{
			name:    "max_publishes_per_second twice",
			input:   "momento_local {\n\tmax_publishes_per_second 1\n\tlatency 1ms\n\tmax_publishes_per_second 2\n}",
			wantErr: "max_publishes_per_second is already given at Testfile:2; give it once, at Testfile:4",
		},
		{
			name:    "name twice",
			input:   "momento_local {\n\tname a\n\tname b\n}",
			wantErr: "name is already given at Testfile:2",
		},
		{
			name:    "name without value",
			input:   "momento_local {\n\tname\n}",
			wantErr: "wrong argument count or unexpected line ending after 'name', at Testfile:2",
		},
		{
			name:  "plain message size",
			input: "momento_local {\n max_message_size 100\n}",
			want:  Handler{MaxMessageSize: 100},
		},
		{
			name:  "plain bytes",
			input: "momento_local {\n max_item_size 1000\n max_memory 2000000 \n}",
			want:  Handler{MaxItemSize: 1000, MaxMemory: 2_000_000},
		},
		{
			name:    "argument on the directive line",
			input:   `momento_local extra`,
			wantErr: "wrong argument count or unexpected line ending after 'extra', at Testfile:1",
		},
		{
			name:    "unknown subdirective",
			input:   "momento_local {\n\ttoken t\n\tcolour red\n}",
			wantErr: "unrecognized momento_local subdirective 'colour' (valid: name, token, caches, max_item_size, max_memory, max_message_size, topic_buffer, latency, max_ops_per_second, max_publishes_per_second, max_subscriptions), at Testfile:3",
		},
		{
			name:    "token without value",
			input:   "momento_local {\n\ttoken\n}",
			wantErr: "wrong argument count or unexpected line ending after 'token', at Testfile:2",
		},
		{
			name:    "token with two values",
			input:   "momento_local {\n\ttoken a b\n}",
			wantErr: "at Testfile:2",
		},
		{
			name:    "token twice",
			input:   "momento_local {\n\ttoken a\n\ttoken b\n}",
			wantErr: "token is already given at Testfile:2; give it once, at Testfile:3",
		},
		{
			name:    "max_memory twice",
			input:   "momento_local {\n\tmax_memory 1MiB\n\tcaches a\n\tmax_memory 2MiB\n}",
			wantErr: "max_memory is already given at Testfile:2; give it once, at Testfile:4",
		},
		{
			name:    "max_item_size twice",
			input:   "momento_local {\n\tmax_item_size 1KiB\n\tmax_item_size 1KiB\n}",
			wantErr: "max_item_size is already given at Testfile:2",
		},
		{
			name:    "max_message_size twice",
			input:   "momento_local {\n\tmax_message_size 1KiB\n\tmax_message_size 2KiB\n}",
			wantErr: "max_message_size is already given at Testfile:2",
		},
		{
			name:    "topic_buffer twice",
			input:   "momento_local {\n\ttopic_buffer 1\n\ttopic_buffer 2\n}",
			wantErr: "topic_buffer is already given at Testfile:2",
		},
		{
			name:    "caches without names",
			input:   "momento_local {\n\n\tcaches\n}",
			wantErr: "wrong argument count or unexpected line ending after 'caches', at Testfile:3",
		},
		{
			name:    "bad max_item_size",
			input:   "momento_local {\n\tmax_item_size lots\n}",
			wantErr: "parsing max_item_size: ",
		},
		{
			name:    "bad max_item_size line",
			input:   "momento_local {\n\tmax_item_size lots\n}",
			wantErr: "at Testfile:2",
		},
		{
			name:    "zero max_memory",
			input:   "momento_local {\n\tmax_memory 0\n}",
			wantErr: "max_memory must be between 1 byte and 8EiB, got 0, at Testfile:2",
		},
		{
			name:    "max_memory without value",
			input:   "momento_local {\n\tmax_memory\n}",
			wantErr: "wrong argument count or unexpected line ending after 'max_memory', at Testfile:2",
		},
		{
			name:    "bad max_message_size",
			input:   "momento_local {\n\tmax_message_size big\n}",
			wantErr: "parsing max_message_size: ",
		},
		{
			name:    "zero max_message_size",
			input:   "momento_local {\n\n\tmax_message_size 0\n}",
			wantErr: "max_message_size must be between 1 byte and 8EiB, got 0, at Testfile:3",
		},
		{
			name:    "max_message_size without value",
			input:   "momento_local {\n\tmax_message_size\n}",
			wantErr: "wrong argument count or unexpected line ending after 'max_message_size', at Testfile:2",
		},
		{
			name:    "zero topic_buffer",
			input:   "momento_local {\n\ttopic_buffer 0\n}",
			wantErr: "topic_buffer must be a whole number of messages, 1 or more, got 0, at Testfile:2",
		},
		{
			name:    "negative topic_buffer",
			input:   "momento_local {\n\ttopic_buffer -5\n}",
			wantErr: "topic_buffer must be a whole number of messages, 1 or more, got -5, at Testfile:2",
		},
		{
			name:    "topic_buffer with a unit",
			input:   "momento_local {\n\ttoken t\n\ttopic_buffer 1k\n}",
			wantErr: "topic_buffer must be a whole number of messages, 1 or more, got 1k, at Testfile:3",
		},
		{
			name:    "topic_buffer without value",
			input:   "momento_local {\n\ttopic_buffer\n}",
			wantErr: "wrong argument count or unexpected line ending after 'topic_buffer', at Testfile:2",
		},
		{
			name:    "topic_buffer with two values",
			input:   "momento_local {\n\ttopic_buffer 1 2\n}",
			wantErr: "at Testfile:2",
		},
		{
			name:    "max_memory with two values",
			input:   "momento_local {\n\tmax_memory 1 MiB\n}",
			wantErr: "at Testfile:2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got Handler
			err := got.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestAdaptCaddyfile adapts whole Caddyfiles to JSON, as `caddy adapt`
// does, and checks the momento_local handler and where it lands.
func TestAdaptCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		name     string
		caddy    string
		handler  string   // the momento_local handler's JSON
		match    string   // the JSON of its route's matchers, "" for none
		handlers []string // every handler in order, when it matters
		wantErr  string
	}{
		{
			name:    "bare",
			caddy:   ":8080 {\n\tmomento_local\n}",
			handler: `{"handler":"momento_local"}`,
		},
		{
			name: "every subdirective",
			caddy: `:8080 {
	momento_local {
		token t0ken
		caches a b
		max_item_size 1KiB
		max_memory 1MiB
		max_message_size 512
		topic_buffer 32
		name eu-west-1
		latency 250ms
		max_ops_per_second 100
		max_publishes_per_second 10
		max_subscriptions 100
	}
}`,
			handler: `{"handler":"momento_local","token":"t0ken","caches":["a","b"],"max_item_size":1024,"max_memory":1048576,"max_message_size":512,"topic_buffer":32,` +
				`"name":"eu-west-1","latency":250000000,"max_ops_per_second":100,"max_publishes_per_second":10,"max_subscriptions":100}`,
		},
		{
			// Ordered just before reverse_proxy, so after header and
			// respond. (reverse_proxy itself is not imported here: it
			// would add dependencies the gateway does not have.)
			name: "ordered among handlers, with a matcher",
			caddy: `:8080 {
	momento_local /cache/*
	respond /health 200
	header X-Served-By momento_local
}`,
			handler:  `{"handler":"momento_local"}`,
			match:    `[{"path":["/cache/*"]}]`,
			handlers: []string{"headers", "static_response", "momento_local"},
		},
		{
			name:    "error carries the line",
			caddy:   ":8080 {\n\tmomento_local {\n\t\tcolour red\n\t}\n}",
			wantErr: "unrecognized momento_local subdirective 'colour' (valid: name, token, caches, max_item_size, max_memory, max_message_size, topic_buffer, latency, max_ops_per_second, max_publishes_per_second, max_subscriptions), at Caddyfile:3",
		},
		{
			name:    "topic_buffer error carries the line",
			caddy:   ":8080 {\n\tmomento_local {\n\t\tmax_message_size 1KiB\n\t\ttopic_buffer none\n\t}\n}",
			wantErr: "topic_buffer must be a whole number of messages, 1 or more, got none, at Caddyfile:4",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tc.caddy), map[string]any{"filename": "Caddyfile"})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			var config any
			if err := json.Unmarshal(out, &config); err != nil {
				t.Fatal(err)
			}
			found := collectHandlers(config, nil, nil)

			var names []string
			var ours []foundHandler
			for _, f := range found {
				name := f.handler["handler"].(string)
				names = append(names, name)
				if name == "momento_local" {
					ours = append(ours, f)
				}
			}
			if len(ours) != 1 {
				t.Fatalf("%d momento_local handlers in %s", len(ours), out)
			}
			if got := canonicalJSON(t, ours[0].handler); got != canonicalJSON(t, tc.handler) {
				t.Errorf("handler\n got %s\nwant %s", got, tc.handler)
			}
			if tc.match != "" {
				if got := canonicalJSON(t, ours[0].match); got != canonicalJSON(t, tc.match) {
					t.Errorf("match\n got %s\nwant %s", got, tc.match)
				}
			}
			if tc.handlers != nil && !reflect.DeepEqual(names, tc.handlers) {
				t.Errorf("handlers in order %v, want %v", names, tc.handlers)
			}
		})
	}
}

type foundHandler struct {
	handler map[string]any
	match   any // the matchers of the route holding the handler
}

// collectHandlers walks adapted JSON and returns every handler object in
// order, with its route's matchers.
func collectHandlers(v any, match any, found []foundHandler) []foundHandler {
	switch v := v.(type) {
	case []any:
		for _, e := range v {
			found = collectHandlers(e, match, found)
		}
	case map[string]any:
		if _, ok := v["handler"].(string); ok {
			found = append(found, foundHandler{handler: v, match: match})
		}
		if handle, ok := v["handle"]; ok { // a route
			return collectHandlers(handle, v["match"], found)
		}
		for _, key := range []string{"apps", "http", "servers", "srv0", "routes"} {
			if child, ok := v[key]; ok {
				found = collectHandlers(child, match, found)
			}
		}
	}
	return found
}

func canonicalJSON(t *testing.T, v any) string {
	t.Helper()
	if s, ok := v.(string); ok {
		if err := json.Unmarshal([]byte(s), &v); err != nil {
			t.Fatalf("bad JSON %q: %v", s, err)
		}
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
