// Command topics measures topic fan-out through the gateway: N subscribers
// (long polls or Server-Sent Events) on one topic, a message published
// every interval, against a region that enforces Momento's limits (the
// embedded backend with max_subscriptions 100 and 10 ms of latency, see
// bench/topics.Caddyfile). It reports whether every subscriber received
// every message, the publish-to-receipt latency, the answers other than
// 200, the most upstream subscriptions the gateway held at once, and the
// gateway's memory and goroutines per waiting subscriber, twice: when every
// subscriber waits on its first poll or stream, and again once every
// message has been delivered and every subscriber waits again (the steady
// state: a connection that has carried answers costs more than a fresh
// one, see BENCHMARKS.md).
//
// Run it through bench/topics.sh, which starts the gateway.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	gateway := flag.String("gateway", "http://127.0.0.1:18480", "the gateway's base URL")
	admin := flag.String("admin", "http://127.0.0.1:18489", "the gateway's admin API")
	pid := flag.Int("pid", 0, "the gateway's process id, for its memory")
	n := flag.Int("n", 1000, "subscribers")
	mode := flag.String("mode", "longpoll", "longpoll or sse")
	messages := flag.Int("messages", 20, "messages to publish")
	interval := flag.Duration("interval", 250*time.Millisecond, "time between publishes")
	label := flag.String("label", "", "a label for the result line")
	clientKind := flag.String("client", "raw", "how long polls are sent: raw (HTTP/1.1 written directly, one connection per subscriber) or nethttp (net/http's client)")
	steadyState := flag.Bool("steady", true, "measure the steady state too (once every message is delivered and every subscriber waits again), then publish one more message, \"end\", to release them; off for 1:1 forwarding, whose subscribers cannot all wait at once")
	flag.Parse()

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *n + 10, MaxConnsPerHost: 0, DisableCompression: true}}
	topic := fmt.Sprintf("/topics/bench/t%d", time.Now().UnixNano())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var latencies = make([][]time.Duration, *n)
	var statuses sync.Map // int -> *atomic.Int64
	count := func(status int) {
		v, _ := statuses.LoadOrStore(status, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	var delivered atomic.Int64
	var ready sync.WaitGroup
	var done sync.WaitGroup
	sent := make([]time.Time, *messages)
	var sentMu sync.RWMutex
	sentAt := func(i int) time.Time { sentMu.RLock(); defer sentMu.RUnlock(); return sent[i] }
	record := func(s int, text string) {
		i, err := strconv.Atoi(text)
		if err != nil || i < 0 || i >= *messages {
			return
		}
		latencies[s] = append(latencies[s], time.Since(sentAt(i)))
		delivered.Add(1)
	}

	before := gatewayFigures(*admin, *pid)
	for s := range *n {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			// Each waits for one message more than the timed ones: "end",
			// published after the steady-state figures are taken.
			want := *messages
			if *steadyState {
				want++
			}
			if *mode == "sse" {
				subscribeSSE(ctx, client, *gateway+topic, want, &ready, count, func(t string) { record(s, t) })
			} else if *clientKind == "nethttp" {
				subscribeLongPoll(ctx, client, *gateway+topic, want, &ready, count, func(t string) { record(s, t) })
			} else {
				subscribeLongPollRaw(ctx, *gateway, topic, want, &ready, count, func(t string) { record(s, t) })
			}
		}()
	}
	ready.Wait()
	// Let every subscriber be waiting at the gateway before measuring.
	time.Sleep(2 * time.Second)
	waiting := gatewayFigures(*admin, *pid)

	for i := range *messages {
		sentMu.Lock()
		sent[i] = time.Now()
		sentMu.Unlock()
		resp, err := client.Post(*gateway+topic, "text/plain", strings.NewReader(strconv.Itoa(i)))
		if err != nil {
			log.Fatalf("publish: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 204 {
			log.Printf("publish %d: %d", i, resp.StatusCode)
		}
		time.Sleep(*interval)
	}
	// The steady state: every timed message delivered, and every
	// subscriber waiting again (or 30 s passed: then the figures say so).
	var steady figures
	steadyNote := ""
	if *steadyState {
		steadyBy := time.Now().Add(30 * time.Second)
		for time.Now().Before(steadyBy) && (delivered.Load() < int64(*n**messages) || waitingClients(*admin) < *n) {
			time.Sleep(50 * time.Millisecond)
		}
		steady = gatewayFigures(*admin, *pid)
		steadyNote = ""
		if delivered.Load() < int64(*n**messages) || waitingClients(*admin) < *n {
			steadyNote = "(not settled)"
		}
		if resp, err := client.Post(*gateway+topic, "text/plain", strings.NewReader("end")); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	finished := make(chan struct{})
	go func() { done.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(30 * time.Second):
	}
	cancel()
	most := gatewayFigures(*admin, *pid).mostSubscriptions

	var all []time.Duration
	complete := 0
	for _, l := range latencies {
		all = append(all, l...)
		if len(l) == *messages {
			complete++
		}
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(float64(len(all))*p))]
	}
	var other []string
	statuses.Range(func(k, v any) bool {
		if k.(int) != 200 {
			other = append(other, fmt.Sprintf("%d×%d", k, v.(*atomic.Int64).Load()))
		}
		return true
	})
	per := func(after, base int) float64 { return float64(after-base) / float64(*n) }
	costs := func(f figures) string {
		return fmt.Sprintf("rss_per_waiter=%.1fKiB live_per_waiter=%.1fKiB (heap %.1f, stacks %.1f) goroutines_per_waiter=%.2f",
			per(f.rssKiB, before.rssKiB), per(f.heapKiB+f.stackKiB, before.heapKiB+before.stackKiB),
			per(f.heapKiB, before.heapKiB), per(f.stackKiB, before.stackKiB), per(f.goroutines, before.goroutines))
	}
	steadyCosts := "not measured"
	if *steadyState {
		steadyCosts = costs(steady)
	}
	fmt.Printf("%s\tmode=%s\tclient=%s\tn=%d\tmessages=%d\tcomplete=%d/%d\tdelivered=%d/%d\tp50=%s\tp99=%s\tmax=%s\tnon200=%s\tupstream_subscriptions_max=%d\tfirst_wait: %s\tsteady%s: %s\n",
		*label, *mode, *clientKind, *n, *messages, complete, *n, len(all), *n**messages, pct(0.5).Round(time.Millisecond), pct(0.99).Round(time.Millisecond),
		pct(1).Round(time.Millisecond), strings.Join(other, ",")+"-", most, costs(waiting), steadyNote, steadyCosts)
}

// subscribeLongPoll follows the topic with Momento's long polls, through
// net/http's client.
func subscribeLongPoll(ctx context.Context, c *http.Client, url string, want int, ready *sync.WaitGroup, count func(int), got func(string)) {
	var cur pollCursor
	first := true
	for cur.received < want && ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+cur.query(), nil)
		if first {
			ready.Done()
			first = false
		}
		resp, err := c.Do(req)
		if err != nil {
			return
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		count(resp.StatusCode)
		if resp.StatusCode != 200 {
			time.Sleep(time.Second)
			continue
		}
		cur.apply(body, got)
	}
}

// subscribeLongPollRaw follows the topic with Momento's long polls, each
// subscriber on one kept-alive HTTP/1.1 connection of its own, written and
// read directly: the same requests as net/http's client sends, for a
// fraction of its CPU (its Transport runs two goroutines per connection
// and hands every request between them), which leaves the shared cores to
// the gateway.
func subscribeLongPollRaw(ctx context.Context, base, path string, want int, ready *sync.WaitGroup, count func(int), got func(string)) {
	ready.Done()
	host := strings.TrimPrefix(base, "http://")
	var cur pollCursor
	for cur.received < want && ctx.Err() == nil {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", host)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		br := bufio.NewReader(conn)
		var req []byte
		for cur.received < want {
			req = fmt.Appendf(req[:0], "GET %s%s HTTP/1.1\r\nHost: %s\r\n\r\n", path, cur.query(), host)
			if _, err = conn.Write(req); err != nil {
				break
			}
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				break
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				break
			}
			count(resp.StatusCode)
			if resp.StatusCode != 200 {
				time.Sleep(time.Second)
			} else {
				cur.apply(body, got)
			}
			if resp.Close {
				break
			}
		}
		stop()
		conn.Close()
	}
}

// pollCursor is where a long-polling subscriber is in the topic.
type pollCursor struct {
	seq, page uint64
	received  int
}

func (c *pollCursor) query() string {
	return fmt.Sprintf("?sequence_number=%d&sequence_page=%d", c.seq, c.page)
}

// apply reads a subscribe answer: each message to got, and the cursor
// moved past it (or to where a discontinuity says).
func (c *pollCursor) apply(body []byte, got func(string)) {
	var ans struct {
		Items []struct {
			Item *struct {
				Seq   uint64                `json:"topic_sequence_number"`
				Page  uint64                `json:"sequence_page"`
				Value struct{ Text string } `json:"value"`
			} `json:"item"`
			Discontinuity *struct {
				New  uint64 `json:"new_topic_sequence"`
				Page uint64 `json:"new_sequence_page"`
			} `json:"discontinuity"`
		} `json:"items"`
	}
	if json.Unmarshal(body, &ans) != nil {
		return
	}
	for _, it := range ans.Items {
		switch {
		case it.Item != nil:
			got(it.Item.Value.Text)
			c.received++
			c.seq, c.page = it.Item.Seq+1, it.Item.Page
		case it.Discontinuity != nil:
			c.seq, c.page = it.Discontinuity.New, it.Discontinuity.Page
		}
	}
}

// subscribeSSE follows the topic as Server-Sent Events.
func subscribeSSE(ctx context.Context, c *http.Client, url string, want int, ready *sync.WaitGroup, count func(int), got func(string)) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	req.Header.Set("Accept", "text/event-stream")
	ready.Done()
	resp, err := c.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	count(resp.StatusCode)
	if resp.StatusCode != 200 {
		return
	}
	br := bufio.NewReader(resp.Body)
	received := 0
	for received < want {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		if data, ok := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "data: "); ok && !strings.HasPrefix(data, "{") {
			got(data)
			received++
		}
	}
}

type figures struct {
	rssKiB, goroutines int
	// heapKiB and stackKiB are the Go heap's live bytes and the goroutine
	// stacks' bytes, read right after a garbage collection: RSS holds
	// garbage and freed memory too, these do not.
	heapKiB, stackKiB int
	mostSubscriptions int
}

var (
	goroutinesRe = regexp.MustCompile(`(?m)^go_goroutines (\d+)`)
	heapAllocRe  = regexp.MustCompile(`(?m)^# HeapAlloc = (\d+)`)
	stackRe      = regexp.MustCompile(`(?m)^# Stack = (\d+) /`)
)

// waitingClients is the number of clients waiting on topics at the
// gateway, summed over its regions.
func waitingClients(admin string) int {
	resp, err := http.Get(admin + "/momento/regions")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var regions []struct {
		Waiters int `json:"topic_waiters"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&regions)
	total := 0
	for _, r := range regions {
		total += r.Waiters
	}
	return total
}

// gatewayFigures reads the gateway's RSS, goroutines, live heap and stacks
// (its admin endpoint's heap profile, which collects garbage first) and
// open upstream subscriptions (the most seen by this process, polled
// since start).
func gatewayFigures(admin string, pid int) figures {
	var f figures
	if pid > 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
			if m := regexp.MustCompile(`VmRSS:\s+(\d+) kB`).FindSubmatch(b); m != nil {
				f.rssKiB, _ = strconv.Atoi(string(m[1]))
			}
		}
	}
	if resp, err := http.Get(admin + "/metrics"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := goroutinesRe.FindSubmatch(b); m != nil {
			f.goroutines, _ = strconv.Atoi(string(m[1]))
		}
	}
	if resp, err := http.Get(admin + "/debug/pprof/heap?gc=1&debug=1"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := heapAllocRe.FindSubmatch(b); m != nil {
			v, _ := strconv.Atoi(string(m[1]))
			f.heapKiB = v / 1024
		}
		if m := stackRe.FindSubmatch(b); m != nil {
			v, _ := strconv.Atoi(string(m[1]))
			f.stackKiB = v / 1024
		}
	}
	f.mostSubscriptions = int(mostSubscriptions.Load())
	return f
}

var mostSubscriptions atomic.Int64

func init() {
	// Watch the gateway's upstream subscriptions all along.
	go func() {
		admin := "http://127.0.0.1:18489"
		for _, a := range os.Args {
			if v, ok := strings.CutPrefix(a, "-admin="); ok {
				admin = v
			}
		}
		for {
			if resp, err := http.Get(admin + "/momento/regions"); err == nil {
				var regions []struct{ Subscriptions int64 }
				_ = json.NewDecoder(resp.Body).Decode(&regions)
				resp.Body.Close()
				for _, r := range regions {
					for m := mostSubscriptions.Load(); r.Subscriptions > m && !mostSubscriptions.CompareAndSwap(m, r.Subscriptions); m = mostSubscriptions.Load() {
					}
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
}
