// Command reads measures how the gateway multiplies a region's read
// budget: C clients read K hot keys for a while through the gateway, in
// front of a region that enforces Momento's default 100 operations a second
// and answers 10 ms late (the embedded backend, bench/reads.Caddyfile),
// while a writer writes one of the keys through the gateway every 500 ms
// and reads it back, and one write is made behind the gateway's back. It
// reports the share of reads answered 200, the 429s, the upstream calls per
// client read, read-your-writes violations, how long the write behind the
// gateway's back took to show, and the read latency.
//
// Run it through bench/reads.sh, which starts the gateway in each mode.
package main

import (
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	gateway := flag.String("gateway", "http://127.0.0.1:18490", "the gateway's base URL")
	region := flag.String("region", "http://127.0.0.1:18491", "the region, for the write behind the gateway's back")
	admin := flag.String("admin", "http://127.0.0.1:18499", "the gateway's admin API")
	clients := flag.Int("clients", 200, "concurrent readers")
	keys := flag.Int("keys", 10, "hot keys")
	duration := flag.Duration("duration", 10*time.Second, "how long the readers read")
	label := flag.String("label", "", "a label for the result line")
	rate := flag.Float64("rate", 0, "reads a second per client (0: each client reads as fast as it is answered)")
	flag.Parse()

	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: *clients + 10}}
	do := func(method, url, body string, token bool) (int, string, error) {
		req, _ := http.NewRequest(method, url, strings.NewReader(body))
		if token {
			req.Header.Set("Authorization", "bench")
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b), nil
	}
	// The hot keys exist before the readers start (written straight at the
	// region, under its rate limit).
	for k := range *keys {
		for {
			st, _, err := do(http.MethodPut, fmt.Sprintf("%s/cache/bench?key=hot-%d&ttl_seconds=600", *region, k), "initial", true)
			if err == nil && st == 204 {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	time.Sleep(1100 * time.Millisecond) // the region's rate budget refills
	callsBefore := upstreamGets(*admin)

	var reads, ok, throttled, failed atomic.Int64
	lat := make([][]time.Duration, *clients)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i := range *clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tick <-chan time.Time
			if *rate > 0 {
				// Clients spread over the period, as independent browsers are.
				period := time.Duration(float64(time.Second) / *rate)
				time.Sleep(period * time.Duration(i) / time.Duration(*clients))
				t := time.NewTicker(period)
				defer t.Stop()
				tick = t.C
			}
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if tick != nil {
					select {
					case <-stop:
						return
					case <-tick:
					}
				}
				start := time.Now()
				st, _, err := do(http.MethodGet, fmt.Sprintf("%s/cache/bench?key=hot-%d", *gateway, (i+n)%*keys), "", false)
				lat[i] = append(lat[i], time.Since(start))
				reads.Add(1)
				switch {
				case err != nil:
					failed.Add(1)
				case st == 200:
					ok.Add(1)
				case st == 429:
					throttled.Add(1)
				default:
					failed.Add(1)
				}
			}
		}()
	}
	// The writer: a key of its own among the hot ones, written through the
	// gateway and read back at once.
	var writes, violations, writeFailures atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for n := 1; ; n++ {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			v := "write-" + strconv.Itoa(n)
			key := fmt.Sprintf("%s/cache/bench?key=hot-%d", *gateway, *keys-1)
			st, _, err := do(http.MethodPut, key+"&ttl_seconds=600", v, false)
			if err != nil || st != 204 {
				writeFailures.Add(1)
				continue
			}
			writes.Add(1)
			if st, got, err := do(http.MethodGet, key, "", false); err == nil && st == 200 && got != v {
				violations.Add(1)
			}
		}
	}()
	// Half way, a write behind the gateway's back, and how long until a
	// reader through the gateway sees it.
	time.Sleep(*duration / 2)
	var visible time.Duration = -1
	for {
		if st, _, err := do(http.MethodPut, *region+"/cache/bench?key=hot-0&ttl_seconds=600", "behind", true); err == nil && st == 204 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	behind := time.Now()
	for time.Since(behind) < 10*time.Second {
		if st, got, err := do(http.MethodGet, *gateway+"/cache/bench?key=hot-0", "", false); err == nil && st == 200 && got == "behind" {
			visible = time.Since(behind)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(*duration / 2)
	close(stop)
	wg.Wait()
	calls := upstreamGets(*admin) - callsBefore

	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	slices.Sort(all)
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(float64(len(all))*p))]
	}
	r := float64(reads.Load())
	fmt.Printf("%s\trate=%v/s\treads=%d\tok=%.2f%%\t429=%d\tother_failures=%d\tupstream_gets_per_read=%.4f\tryw_violations=%d/%d\twrite_failures=%d\tbehind_the_back_visible_after=%s\tp50=%s\tp99=%s\n",
		*label, *rate, reads.Load(), 100*float64(ok.Load())/r, throttled.Load(), failed.Load(), float64(calls)/r,
		violations.Load(), writes.Load(), writeFailures.Load(), visible.Round(time.Millisecond), pct(0.5).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond))
	if visible < 0 {
		log.Print("the write behind the gateway's back never showed")
	}
}

var getsRe = regexp.MustCompile(`(?m)^caddy_momento_upstream_duration_seconds_count\{op="get",region="[^"]*"\} (\d+)`)

// upstreamGets is how many GETs the gateway has sent to its regions.
func upstreamGets(admin string) int64 {
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var n int64
	for _, m := range getsRe.FindAllSubmatch(b, -1) {
		v, _ := strconv.ParseInt(string(m[1]), 10, 64)
		n += v
	}
	return n
}
