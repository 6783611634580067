// Package momentolocal is an embedded, in-memory implementation of Momento's
// HTTP API, both the cache and topics (pub/sub), as a Caddy HTTP handler
// (module http.handlers.momento_local, Caddyfile directive momento_local).
// It lets the gateway run offline in development and gives tests a real
// upstream to talk to on loopback.
//
// Outside Caddy, New and HTTPHandler serve it with net/http alone:
//
//	lh, err := momentolocal.New(momentolocal.Handler{Token: "t"})
//	srv := httptest.NewServer(lh.HTTPHandler())
//	defer lh.Close()
//
// Every request is authorized and checked against the configured caches the
// same way, whichever API it is for: see Handler.
//
// # Reloads
//
// In Caddy, a backend's data lives in state kept across config reloads
// under its name (Handler.Name, "default" when unset): a reloaded config
// with a momento_local of the same name keeps its items, topics, sequence
// numbers and pages. The new config's settings take effect over the kept
// data with the first request it serves (a config that fails to load
// changes nothing): a smaller max_memory evicts, a smaller max_item_size
// drops larger items, a smaller topic_buffer drops older messages, and a
// cache taken off the caches list loses its items and topics. A backend
// whose name no config uses any more is freed. Subscribers waiting through
// the old config are answered an empty page and poll again; see Close.
//
// # Simulating a region
//
// Off by default, Handler's Latency, MaxOpsPerSecond,
// MaxPublishesPerSecond and MaxSubscriptions make the backend answer late
// and refuse with 429, as a Momento region under its account limits does,
// so that a gateway in front can be benchmarked against one.
//
// # Topics
//
// Topics are served the way Momento's HTTP API describes them:
//
//   - POST /topics/{cache}/{topic} publishes the body: a binary message
//     when its Content-Type is application/octet-stream, a text message
//     for any other type or none (Momento takes curl -d's
//     application/x-www-form-urlencoded and application/json as text too).
//     A text message that is not valid UTF-8 is 400. Success is 204; a
//     body over max_message_size is 413, and a body that cannot be read
//     whole is not published either.
//   - GET /topics/{cache}/{topic}?sequence_number=N&sequence_page=P
//     subscribes. N and P are whole numbers, absent meaning 0. It answers
//     200 with Content-Type application/json as soon as it has something
//     to say, and waits (a long poll) until then.
//
// Topic names follow the rules of cache names. Other methods are 405. A
// subscribe answer looks like this, binary values in standard base64:
//
//	{"items":[{"item":{"topic_sequence_number":0,"sequence_page":1748358253,"value":{"text":"hi"}}},
//	          {"item":{"topic_sequence_number":1,"sequence_page":1748358253,"value":{"binary":"AP8="}}}]}
//
// A topic exists as soon as it is published or subscribed to. Its messages
// are numbered from 0, one more for each publish. Every item carries the
// topic's sequence page: a number fixed when the topic's state is created,
// its creation time in Unix seconds, raised if need be so that no two
// topics of one handler share a page. A new page tells a client that the
// numbering restarted. Each topic keeps its last topic_buffer messages,
// and max_memory may drop older ones.
//
// A subscribe answers with the buffered messages numbered N or more, oldest
// first and at most 100 of them. When the client cannot get message N, the
// answer starts with a discontinuity,
//
//	{"discontinuity":{"last_topic_sequence":N-1,"new_topic_sequence":M,"new_sequence_page":<page>}}
//
// where last_topic_sequence is 0 when N is 0 (it is unsigned), and M is
// the number of the first message that follows:
//
//   - When message N was dropped, M is the oldest message kept.
//   - When P is not 0 and not the topic's page (the topic was recreated, as
//     after a restart, or forgotten while idle), M is the oldest message
//     kept, or, when there is none, the next one to be published, which the
//     subscribe waits for.
//   - When N is past the next number the topic will assign (the client is
//     ahead of the topic), M is that next number, and the answer comes at
//     once with no items.
//
// Otherwise, when no message N or later is buffered yet, the subscribe waits
// until one is published; a publish wakes the topic's waiting subscribers at
// once. There is no server-side timeout: the gateway bounds the wait. When
// the client goes away, the handler returns at once; when the handler is
// closed (Caddy unloading the config), waiting subscribers are answered an
// empty page, {"items":[]}, and poll again.
//
// A waiting subscriber costs no goroutine beyond its request's. Buffered
// messages count against max_memory, as the JSON subscribers receive, and a
// topic with no messages and no waiting subscriber is forgotten, so the
// topics a client can create are bounded by max_memory and by its open
// requests.
package momentolocal
