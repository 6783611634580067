package momento

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/sony/gobreaker/v2"
)

// In production Caddy serves the gateway over HTTPS, to HTTP/1.1, HTTP/2
// and HTTP/3 clients alike. The main behaviours, over each, through a
// gateway with `tls internal` (a CA in a temporary storage path, never
// installed into the system's trust store).
func TestOverHTTPSWithEachProtocol(t *testing.T) {
	for _, proto := range protocols {
		t.Run(proto, func(t *testing.T) {
			up, lh := localUpstream(t, "t")
			// A region that breaks off its answer midway, and one that fails.
			cut := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Length", "100000")
				_, _ = w.Write(bytes.Repeat([]byte("x"), 30000))
				w.(http.Flusher).Flush()
				conn, _, _ := w.(http.Hijacker).Hijack()
				conn.Close()
			}))
			failing := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusInternalServerError)
			}))
			hang := make(chan struct{})
			defer close(hang)
			slow := newUpstream(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = w.Write(bytes.Repeat([]byte("s"), 64<<10))
				w.(http.Flusher).Flush()
				select {
				case <-hang:
				case <-r.Context().Done():
				}
			}))
			// A region of the same backend under a budget of one call a
			// second (see budget.go).
			budgeted := strings.Replace(regionBlock("budgeted", up.URL, "t"), "\t\t}\n", "\t\t\tmax_ops_per_second 1\n\t\t}\n", 1)
			regions := regionBlock("r", up.URL, "t") + regionBlock("cut", cut.URL, "t") +
				regionBlock("failing", failing.URL, "t") + regionBlock("slow", slow.URL, "t") + budgeted +
				"\t\troute cut-* cut\n\t\troute failing-* failing\n\t\troute slow-* slow\n\t\troute budgeted-* budgeted\n\t\tdefault_region r\n" +
				"\t\tbreaker {\n\t\t\tfailures 2\n\t\t\topen_for 1m\n\t\t}\n"
			// Under /short/, a timeout short enough for a stalled upload.
			// Under /cached/, the local cache.
			g := startGatewayTLS(t, proto, "\thandle_path /short/* {\n\t\tmomento {\n"+regions+"\t\ttimeout 100ms\n\t\t}\n\t}\n"+
				"\thandle_path /cached/* {\n\t\tmomento {\n"+regions+"\t\tlocal_cache {\n\t\t\tmax_age 1m\n\t\t}\n\t\t}\n\t}\n\tmomento {\n"+regions+"\t}")

			// Round trips.
			expect(t, g.put("/cache/c?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
			r := g.get("/cache/c?key=k")
			expect(t, r, http.StatusOK, "v")
			if r.header.Get("Connection") != "" {
				t.Errorf("a connection-specific header on %s: %v", proto, r.header)
			}
			expect(t, g.do(http.MethodDelete, "/cache/c?key=k", nil), http.StatusNoContent, "")
			expect(t, g.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")

			// 5 MiB both ways, streamed (key plus value within the limit).
			value := make([]byte, 5<<20-8)
			_, _ = rand.Read(value)
			expect(t, g.do(http.MethodPut, "/cache/c?key=big&ttl_seconds=60", bytes.NewReader(value)), http.StatusNoContent, "")
			if r := g.get("/cache/c?key=big"); r.status != 200 || !bytes.Equal([]byte(r.body), value) {
				t.Fatalf("5 MiB: got %d and %d bytes", r.status, len(r.body))
			}

			// Reads shared by concurrent clients (streams of one connection
			// on h2 and h3), then answered by the local cache, whole.
			shared := value[:256<<10]
			expect(t, g.do(http.MethodPut, "/cached/cache/c?key=shared&ttl_seconds=60", bytes.NewReader(shared)), http.StatusNoContent, "")
			var wg sync.WaitGroup
			for range 5 {
				wg.Go(func() {
					if r := g.get("/cached/cache/c?key=shared"); r.status != 200 || r.body != string(shared) {
						t.Errorf("shared read: %d, %d bytes", r.status, len(r.body))
					}
				})
			}
			wg.Wait()
			if r := g.get("/cached/cache/c?key=shared"); r.body != string(shared) || !strings.HasPrefix(r.header.Get("Cache-Status"), "momento-gateway; hit") {
				t.Fatalf("cached read: %d bytes, Cache-Status %q", len(r.body), r.header.Get("Cache-Status"))
			}

			// A long poll on this protocol waits for the next message, and
			// gets it (the gateway writes the answer after the wait).
			// (The previous protocol's stream may still be leaving: the
			// count of waiting clients is the process's.)
			waitFor(t, func() bool { return waiters.total.Load() == 0 })
			polled := make(chan response, 1)
			go func() { polled <- g.get("/topics/c/polled") }()
			waitFor(t, func() bool { return waiters.total.Load() == 1 })
			expect(t, g.publish("/topics/c/polled", "text/plain", "news"), http.StatusNoContent, "")
			expect(t, <-polled, http.StatusOK, `"text":"news"`)

			// Server-Sent Events: the stream's headers, then each message
			// published as an event, on this protocol.
			req, _ := http.NewRequest(http.MethodGet, g.base+"/topics/c/feed", nil)
			req.Header.Set("Accept", "text/event-stream")
			stream, err := g.client.Do(req)
			if err != nil || stream.StatusCode != 200 || stream.Header.Get("Content-Type") != "text/event-stream" {
				t.Fatalf("event stream: %v %v", stream, err)
			}
			events := bufio.NewReader(stream.Body)
			for _, msg := range []string{"one", "two"} {
				expect(t, g.publish("/topics/c/feed", "text/plain", msg), http.StatusNoContent, "")
				for {
					line, err := events.ReadString('\n')
					if err != nil {
						t.Fatalf("event stream: %v", err)
					}
					if line == "data: "+msg+"\n" {
						break
					}
				}
			}
			stream.Body.Close()

			// A stalled upload gets 408 with its message, and stores nothing.
			pr, pw := io.Pipe()
			go func() { _, _ = pw.Write([]byte("first bytes, then nothing")) }()
			req, _ = http.NewRequest(http.MethodPut, g.base+"/short/cache/c?key=stalled&ttl_seconds=60", pr)
			req.ContentLength = 1000
			resp, err := g.client.Do(req)
			if err != nil {
				t.Fatalf("stalled upload: %v", err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			pw.Close()
			if resp.StatusCode != http.StatusRequestTimeout || !strings.Contains(string(body), "the value stopped arriving for 100ms; nothing was stored") {
				t.Fatalf("stalled upload: %d %q", resp.StatusCode, body)
			}
			if lh.Len() != 2 {
				t.Fatalf("the backend holds %d items, want 2 (the 5 MiB one and the shared one)", lh.Len())
			}

			// A region that breaks off mid-answer: the client sees an
			// aborted answer, never a short value taken as whole.
			resp, err = g.client.Get(g.base + "/cache/cut-1?key=k")
			if err == nil {
				var n int64
				n, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil {
					t.Fatalf("a cut-off answer of %d bytes was read as complete", n)
				}
			}

			// A client that leaves mid-answer is not the region's failure.
			ctx, cancel := context.WithCancel(context.Background())
			req, _ = http.NewRequestWithContext(ctx, http.MethodGet, g.base+"/cache/slow-1?key=k", nil)
			resp, err = g.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, make([]byte, 1024)); err != nil {
				t.Fatal(err)
			}
			cancel()
			resp.Body.Close()
			b := pooledBreaker(t, "slow", slow.URL)
			waitFor(t, func() bool { return b.counts().TotalExclusions == 1 })
			if c := b.counts(); c.TotalFailures != 0 || b.state() != gobreaker.StateClosed {
				t.Fatalf("a client leaving mid-answer counted against the region: %+v", c)
			}

			// A long poll waits for the message.
			got := make(chan []message, 1)
			polls := up.hits.Load()
			go func() {
				msgs, err := (&subscriber{g: g, path: "/topics/c/live"}).poll(context.Background())
				if err != nil {
					t.Error(err)
				}
				got <- msgs
			}()
			waitFor(t, func() bool { return up.hits.Load() == polls+1 }) // the hub waits at the region
			expect(t, g.publish("/topics/c/live", "text/plain", "hello over "+proto), http.StatusNoContent, "")
			if msgs := <-got; len(msgs) != 1 || msgs[0].value != "hello over "+proto {
				t.Fatalf("long poll got %+v", msgs)
			}

			// An event stream, as EventSource opens it.
			es := openEvents(t, context.Background(), g, "/topics/c/events", "")
			waitFor(t, func() bool { return int(waiters.total.Load()) == 1 })
			expect(t, g.publish("/topics/c/events", "text/plain", "streamed over "+proto), http.StatusNoContent, "")
			if ev := es.next(t); ev.event != "text" || ev.data != "streamed over "+proto {
				t.Fatalf("event %+v", ev)
			}
			es.close()
			waitFor(t, func() bool { return int(waiters.total.Load()) == 0 })

			// The breaker opens, and says when to come back.
			expect(t, g.get("/cache/failing-1?key=k"), http.StatusInternalServerError, "")
			expect(t, g.get("/cache/failing-1?key=k"), http.StatusInternalServerError, "")
			r = g.get("/cache/failing-1?key=k")
			expect(t, r, http.StatusServiceUnavailable, "circuit breaker is open")
			if ra := r.header.Get("Retry-After"); ra != "60" && ra != "59" {
				t.Errorf("Retry-After %q", ra)
			}

			// A region's budget spent: 429 with Retry-After on this
			// protocol, and nothing sent.
			hits := up.hits.Load()
			expect(t, g.put("/cache/budgeted-1?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
			r = g.put("/cache/budgeted-1?key=k&ttl_seconds=60", "v")
			expect(t, r, http.StatusTooManyRequests, "region budgeted is at its max_ops_per_second (1 cache operations a second)")
			if r.header.Get("Retry-After") == "" || up.hits.Load() != hits+1 {
				t.Errorf("a spent budget: Retry-After %q, %d calls sent", r.header.Get("Retry-After"), up.hits.Load()-hits)
			}
		})
	}
}
