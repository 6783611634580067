package momentolocal

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestSetGetDelete(t *testing.T) {
	b := newBackend(t, Handler{})

	b.expect("put", b.put("/cache/c?key=k&ttl_seconds=60", "hello"), http.StatusNoContent, "")
	r := b.get("/cache/c?key=k")
	b.expect("get", r, http.StatusOK, "hello")
	if ct := r.header.Get("Content-Type"); ct != "application/octet-stream" {
		t.Errorf("Content-Type = %q", ct)
	}
	if cl := r.header.Get("Content-Length"); cl != "5" {
		t.Errorf("Content-Length = %q", cl)
	}

	b.expect("overwrite", b.put("/cache/c?key=k&ttl_seconds=60", "bye"), http.StatusNoContent, "")
	b.expect("get after overwrite", b.get("/cache/c?key=k"), http.StatusOK, "bye")
	b.expect("other cache, same key", b.get("/cache/d?key=k"), http.StatusNotFound, "Key Not Found")

	b.expect("delete", b.do(http.MethodDelete, "/cache/c?key=k", nil, nil), http.StatusNoContent, "")
	r = b.get("/cache/c?key=k")
	b.expect("get after delete", r, http.StatusNotFound, "Key Not Found")
	if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
		t.Errorf("miss Content-Type = %q", ct)
	}
	b.expect("delete absent", b.do(http.MethodDelete, "/cache/c?key=k", nil, nil), http.StatusNoContent, "")
	if b.h.Len() != 0 || b.h.Bytes() != 0 {
		t.Errorf("after delete: Len %d Bytes %d, want 0 0", b.h.Len(), b.h.Bytes())
	}

	b.expect("empty value", b.put("/cache/c?key=e&ttl_seconds=60", ""), http.StatusNoContent, "")
	r = b.get("/cache/c?key=e")
	b.expect("get empty value", r, http.StatusOK, "")
	if cl := r.header.Get("Content-Length"); cl != "0" {
		t.Errorf("empty value Content-Length = %q", cl)
	}
}

func TestKeyForms(t *testing.T) {
	b := newBackend(t, Handler{})

	b.expect("put key", b.put("/cache/c?key=example_key&ttl_seconds=60", "v1"), http.StatusNoContent, "")
	for _, q := range []string{
		"key_base64=ZXhhbXBsZV9rZXk",     // Momento's example: unpadded
		"key_base64=ZXhhbXBsZV9rZXk=",    // padded
		"key_base64=ZXhhbXBsZV9rZXk%3D",  // padded, escaped
		"key=example%5Fkey",              // escaped key
		"ttl_seconds=1&key=example_key&", // order and empty parts don't matter
	} {
		b.expect(q, b.get("/cache/c?"+q), http.StatusOK, "v1")
	}

	// A key that is not valid UTF-8, set and read in both forms.
	raw := "\x00\xff\xfe/+ ="
	enc := base64.URLEncoding.EncodeToString([]byte(raw))
	b.expect("put binary key", b.put("/cache/c?key_base64="+enc+"&ttl_seconds=60", "v2"), http.StatusNoContent, "")
	b.expect("get binary key", b.get("/cache/c?key_base64="+strings.TrimRight(enc, "=")), http.StatusOK, "v2")
	b.expect("get binary key escaped", b.get("/cache/c?key=%00%FF%FE%2F%2B+%3D"), http.StatusOK, "v2")

	// A raw ';' is part of the value, not a separator: the key is "a;b".
	b.expect("put raw ;", b.put("/cache/c?key=a;b&ttl_seconds=60", "semi"), http.StatusNoContent, "")
	b.expect("get escaped ;", b.get("/cache/c?key=a%3Bb"), http.StatusOK, "semi")
	b.expect("get by base64 of a;b", b.get("/cache/c?key_base64="+base64.RawURLEncoding.EncodeToString([]byte("a;b"))), http.StatusOK, "semi")
	b.expect("a alone", b.get("/cache/c?key=a"), http.StatusNotFound, "Key Not Found")
	b.expect("delete raw ;", b.do(http.MethodDelete, "/cache/c?key=a;b", nil, nil), http.StatusNoContent, "")

	b.expect("delete by key_base64", b.do(http.MethodDelete, "/cache/c?key_base64=ZXhhbXBsZV9rZXk", nil, nil), http.StatusNoContent, "")
	b.expect("get deleted by key", b.get("/cache/c?key=example_key"), http.StatusNotFound, "Key Not Found")
	if b.h.Len() != 1 {
		t.Errorf("Len = %d, want 1", b.h.Len())
	}
}

func TestBinaryValues(t *testing.T) {
	b := newBackend(t, Handler{})

	every := make([]byte, 256)
	for i := range every {
		every[i] = byte(i)
	}
	big := make([]byte, 1<<20)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	for name, value := range map[string][]byte{"every byte": every, "1MiB random": big} {
		target := "/cache/c?key=" + strings.ReplaceAll(name, " ", "_")
		b.expect(name+" put", b.do(http.MethodPut, target+"&ttl_seconds=60", bytes.NewReader(value), nil), http.StatusNoContent, "")
		r := b.get(target)
		if r.status != http.StatusOK || r.body != string(value) {
			t.Errorf("%s: got %d with %d bytes, want 200 with the %d bytes put", name, r.status, len(r.body), len(value))
		}
		// Chunked uploads (unknown length) too.
		b.expect(name+" chunked put", b.do(http.MethodPut, target+"&ttl_seconds=60", struct{ io.Reader }{bytes.NewReader(value)}, nil), http.StatusNoContent, "")
		if r := b.get(target); r.body != string(value) {
			t.Errorf("%s chunked: got %d bytes back, not the %d put", name, len(r.body), len(value))
		}
	}
}

func TestTTLExpiresOnAccess(t *testing.T) {
	b := newBackend(t, Handler{})

	b.expect("put", b.put("/cache/c?key=k&ttl_seconds=10", "v"), http.StatusNoContent, "")
	b.clock.Advance(10*time.Second - time.Nanosecond)
	b.expect("just before expiry", b.get("/cache/c?key=k"), http.StatusOK, "v")
	b.clock.Advance(time.Nanosecond)
	b.expect("at expiry", b.get("/cache/c?key=k"), http.StatusNotFound, "Key Not Found")
	if b.h.Len() != 0 || b.h.Bytes() != 0 {
		t.Errorf("expired item still counted: Len %d Bytes %d", b.h.Len(), b.h.Bytes())
	}

	// Setting again restarts the lifetime.
	b.put("/cache/c?key=k&ttl_seconds=10", "v")
	b.clock.Advance(5 * time.Second)
	b.put("/cache/c?key=k&ttl_seconds=10", "w")
	b.clock.Advance(9 * time.Second)
	b.expect("after reset", b.get("/cache/c?key=k"), http.StatusOK, "w")
}

func TestTTLSweep(t *testing.T) {
	b := newBackend(t, Handler{})

	for i := range 5 {
		b.put(fmt.Sprintf("/cache/c?key=short%d&ttl_seconds=5", i), "xxxxx")
	}
	b.put("/cache/c?key=long&ttl_seconds=100", "yy")

	b.tick()
	if b.h.Len() != 6 {
		t.Fatalf("sweep before expiry: Len = %d, want 6", b.h.Len())
	}
	b.clock.Advance(5 * time.Second)
	b.tick()
	if got, want := b.h.Len(), 1; got != want {
		t.Errorf("after sweep: Len = %d, want %d", got, want)
	}
	if got, want := b.h.Bytes(), int64(len("long")+len("yy")); got != want {
		t.Errorf("after sweep: Bytes = %d, want %d", got, want)
	}
	b.expect("survivor", b.get("/cache/c?key=long"), http.StatusOK, "yy")
}

func TestCaches(t *testing.T) {
	b := newBackend(t, Handler{Caches: []string{"a", "b"}})

	b.expect("put a", b.put("/cache/a?key=k&ttl_seconds=60", "v"), http.StatusNoContent, "")
	b.expect("get a", b.get("/cache/a?key=k"), http.StatusOK, "v")
	b.expect("get b", b.get("/cache/b?key=k"), http.StatusNotFound, "Key Not Found")
	b.expect("get x", b.get("/cache/x?key=k"), http.StatusNotFound, "Cache Not Found")
	b.expect("put x", b.put("/cache/x?key=k&ttl_seconds=60", "v"), http.StatusNotFound, "Cache Not Found")
	b.expect("delete x", b.do(http.MethodDelete, "/cache/x?key=k", nil, nil), http.StatusNotFound, "Cache Not Found")
	if b.h.Len() != 1 {
		t.Errorf("Len = %d, want 1", b.h.Len())
	}
}

func TestBadRequests(t *testing.T) {
	b := newBackend(t, Handler{})
	long := strconv.FormatInt(maxTTLSeconds+1, 10)

	for _, tc := range []struct {
		method, target, want string
	}{
		{"GET", "/cache/c", "missing key"},
		{"GET", "/cache/c?ttl_seconds=5", "missing key"},
		{"GET", "/cache/c?key=", "key is empty"},
		{"GET", "/cache/c?key_base64=", "key_base64 is empty"},
		{"GET", "/cache/c?key_base64===", "key_base64 is empty"},
		{"GET", "/cache/c?key=a&key_base64=YQ", "exactly one of the key and key_base64"},
		{"GET", "/cache/c?key_base64=ab*d", "key_base64 is not valid URL-safe base64"},
		{"GET", "/cache/c?key_base64=YWJj%2Bw", "key_base64 is not valid URL-safe base64"}, // '+' is the standard alphabet
		{"GET", "/cache/c?key_base64=Y", "key_base64 is not valid URL-safe base64"},
		{"GET", "/cache/c?key=a&key=b", "key is given more than once"},
		{"GET", "/cache/c?key=%zz", "malformed query"},
		{"GET", "/cache/c?k%zzey=a", "malformed query"},
		{"PUT", "/cache/c?key=a", "missing ttl_seconds"},
		{"PUT", "/cache/c?key=a&ttl_seconds=", "ttl_seconds must be a positive whole number"},
		{"PUT", "/cache/c?key=a&ttl_seconds=0", "ttl_seconds must be a positive whole number"},
		{"PUT", "/cache/c?key=a&ttl_seconds=-1", "ttl_seconds must be a positive whole number"},
		{"PUT", "/cache/c?key=a&ttl_seconds=1.5", "ttl_seconds must be a positive whole number"},
		{"PUT", "/cache/c?key=a&ttl_seconds=ten", "ttl_seconds must be a positive whole number"},
		{"PUT", "/cache/c?key=a&ttl_seconds=" + long, "ttl_seconds must be at most"},
		{"PUT", "/cache/c?key=a&ttl_seconds=1&ttl_seconds=2", "ttl_seconds is given more than once"},
		{"GET", "/cache/?key=a", "cache name is empty"},
		{"GET", "/cache/a/b?key=a", "must not contain '/'"},
		{"GET", "/cache/a%2Fb?key=a", "must not contain '/'"},
		{"GET", "/cache/a..b?key=a", "must not contain '..'"},
		{"GET", "/cache/a%00b?key=a", "must not contain control characters"},
		{"GET", "/cache/a%7Fb?key=a", "must not contain control characters"},
		{"DELETE", "/cache/c", "missing key"},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			var body io.Reader
			if tc.method == http.MethodPut {
				body = strings.NewReader("v")
			}
			r := b.do(tc.method, tc.target, body, nil)
			if r.status != http.StatusBadRequest || !strings.Contains(r.body, tc.want) {
				t.Errorf("got %d %q, want 400 containing %q", r.status, r.body, tc.want)
			}
			if ct := r.header.Get("Content-Type"); ct != "text/plain; charset=utf-8" {
				t.Errorf("Content-Type = %q", ct)
			}
		})
	}
	if b.h.Len() != 0 {
		t.Errorf("a bad request stored something: Len = %d", b.h.Len())
	}
}

func TestMethodNotAllowed(t *testing.T) {
	b := newBackend(t, Handler{})
	for _, method := range []string{http.MethodPost, http.MethodHead, http.MethodPatch, http.MethodOptions} {
		r := b.do(method, "/cache/c?key=k", nil, nil)
		if r.status != http.StatusMethodNotAllowed {
			t.Errorf("%s: status %d, want 405", method, r.status)
		}
		if allow := r.header.Get("Allow"); allow != "GET, PUT, DELETE" {
			t.Errorf("%s: Allow = %q", method, allow)
		}
	}
}

func TestItemTooLarge(t *testing.T) {
	b := newBackend(t, Handler{MaxItemSize: 64})
	fits := strings.Repeat("v", 63) // with the 1-byte key "k": 64
	over := fits + "v"

	b.expect("fits", b.put("/cache/c?key=k&ttl_seconds=60", fits), http.StatusNoContent, "")
	for name, body := range map[string]io.Reader{
		"with length": strings.NewReader(over),
		"chunked":     struct{ io.Reader }{strings.NewReader(over)},
		"much larger": struct{ io.Reader }{bytes.NewReader(make([]byte, 1<<20))},
	} {
		r := b.do(http.MethodPut, "/cache/c?key=k&ttl_seconds=60", body, nil)
		if r.status != http.StatusRequestEntityTooLarge || !strings.Contains(r.body, "max_item_size (64 bytes)") {
			t.Errorf("%s: got %d %q, want 413 naming max_item_size", name, r.status, r.body)
		}
		b.expect(name+": old value kept", b.get("/cache/c?key=k"), http.StatusOK, fits)
	}

	longKey := strings.Repeat("k", 65)
	b.expect("key alone too large", b.put("/cache/c?key="+longKey+"&ttl_seconds=60", ""), http.StatusRequestEntityTooLarge, "-")
	b.expect("new key too large", b.put("/cache/c?key=kk&ttl_seconds=60", fits), http.StatusRequestEntityTooLarge, "-")
	b.expect("nothing stored", b.get("/cache/c?key=kk"), http.StatusNotFound, "Key Not Found")
	if b.h.Len() != 1 || b.h.Bytes() != 64 {
		t.Errorf("Len %d Bytes %d, want 1 64", b.h.Len(), b.h.Bytes())
	}
}

// An upload that ends early, as when a client (or the gateway enforcing its
// own limit) aborts it, must not be stored truncated.
func TestAbortedUploadStoresNothing(t *testing.T) {
	for _, tc := range []struct {
		name    string
		request string
	}{
		{"chunked, mid-chunk", "Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n5\r\nab"},
		{"chunked, between chunks", "Transfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n"},
		{"chunked, no chunks", "Transfer-Encoding: chunked\r\n\r\n"},
		{"short of Content-Length", "Content-Length: 100\r\n\r\n0123456789"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t, Handler{})
			b.put("/cache/c?key=old&ttl_seconds=60", "old value")

			srv, handled := b.signallingServer()

			for _, key := range []string{"new", "old"} {
				conn, err := net.Dial("tcp", srv.Listener.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				fmt.Fprintf(conn, "PUT /cache/c?key=%s&ttl_seconds=60 HTTP/1.1\r\nHost: test\r\n%s", key, tc.request)
				conn.Close()
				select {
				case <-handled:
				case <-time.After(10 * time.Second):
					t.Fatal("the server did not finish handling the aborted upload")
				}
			}
			b.expect("new key", b.get("/cache/c?key=new"), http.StatusNotFound, "Key Not Found")
			b.expect("old key", b.get("/cache/c?key=old"), http.StatusOK, "old value")
			if b.h.Len() != 1 {
				t.Errorf("Len = %d, want 1", b.h.Len())
			}
		})
	}
}

func TestLRUEviction(t *testing.T) {
	// Every item is a 2-byte key and a 96-byte value (96 is an allocation
	// size class, so the value takes exactly that): 98 bytes plus overhead.
	const itemCost = 2 + 96 + itemOverhead
	b := newBackend(t, Handler{MaxItemSize: 100, MaxMemory: 5 * itemCost})
	value := strings.Repeat("v", 96)
	put := func(i int) {
		b.expect("put", b.put(fmt.Sprintf("/cache/c?key=k%d&ttl_seconds=60", i), value), http.StatusNoContent, "")
	}

	for i := range 5 {
		put(i)
	}
	if b.h.Len() != 5 {
		t.Fatalf("at the bound: Len = %d, want 5 (nothing evicted yet)", b.h.Len())
	}
	b.expect("read k0", b.get("/cache/c?key=k0"), http.StatusOK, value)
	put(5) // evicts k1, the least recently used
	put(6) // evicts k2
	b.expect("overwrite k3", b.put("/cache/c?key=k3&ttl_seconds=60", value), http.StatusNoContent, "")
	put(7) // evicts k4: k3 was just written

	for i, want := range []int{200, 404, 404, 200, 404, 200, 200, 200} {
		if r := b.get(fmt.Sprintf("/cache/c?key=k%d", i)); r.status != want {
			t.Errorf("k%d: status %d, want %d", i, r.status, want)
		}
	}
	if b.h.Len() != 5 || b.h.Bytes() != 5*98 {
		t.Errorf("Len %d Bytes %d, want 5 %d", b.h.Len(), b.h.Bytes(), 5*98)
	}
}

func TestConcurrentClients(t *testing.T) {
	b := newBackend(t, Handler{})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()

	do := func(method, target, body string) (int, string, error) {
		req, err := http.NewRequest(method, b.srv.URL+target, strings.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data), err
	}

	const workers, rounds, shared = 16, 40, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Go(func() {
			fail := func(format string, args ...any) {
				errs <- fmt.Errorf("worker %d: "+format, append([]any{w}, args...)...)
			}
			for i := range rounds {
				// A key of its own: every answer is known.
				own := fmt.Sprintf("/cache/c?key=w%d-%d", w, i)
				value := fmt.Sprintf("value %d %d", w, i)
				if st, _, err := do("PUT", own+"&ttl_seconds=60", value); err != nil || st != 204 {
					fail("put: %d %v", st, err)
					return
				}
				if st, got, err := do("GET", own, ""); err != nil || st != 200 || got != value {
					fail("get: %d %q %v, want %q", st, got, err, value)
					return
				}
				if i%2 == 0 {
					if st, _, err := do("DELETE", own, ""); err != nil || st != 204 {
						fail("delete: %d %v", st, err)
						return
					}
					if st, _, err := do("GET", own, ""); err != nil || st != 404 {
						fail("get after delete: %d %v", st, err)
						return
					}
				}
				// Keys everyone writes: an answer is a miss or a whole value
				// written for that key.
				sk := fmt.Sprintf("s%d", i%shared)
				shTarget := "/cache/shared?key=" + sk
				switch i % 3 {
				case 0:
					_, _, err := do("PUT", shTarget+"&ttl_seconds=60", fmt.Sprintf("%s from %d", sk, w))
					if err != nil {
						fail("shared put: %v", err)
						return
					}
				case 1:
					st, got, err := do("GET", shTarget, "")
					if err != nil || (st != 404 && !(st == 200 && strings.HasPrefix(got, sk+" from "))) {
						fail("shared get: %d %q %v", st, got, err)
						return
					}
				case 2:
					if _, _, err := do("DELETE", shTarget, ""); err != nil {
						fail("shared delete: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// Each worker keeps its odd rounds' keys; shared keys may or may not
	// remain.
	if got, lo := b.h.Len(), workers*rounds/2; got < lo || got > lo+shared {
		t.Errorf("Len = %d, want %d to %d", got, lo, lo+shared)
	}
	checkInvariants(t, b.h.state.store)
}

func BenchmarkGet(b *testing.B) {
	h, err := New(Handler{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	h.state.store.set("c", "example_key", bytes.Repeat([]byte("v"), 100), time.Hour)
	handler := h.HTTPHandler()

	b.Run("key", func(b *testing.B) {
		benchmarkGet(b, handler, httptest.NewRequest(http.MethodGet, "/cache/c?key=example_key", nil))
	})
	b.Run("key_base64", func(b *testing.B) {
		benchmarkGet(b, handler, httptest.NewRequest(http.MethodGet, "/cache/c?key_base64=ZXhhbXBsZV9rZXk", nil))
	})
	b.Run("parallel", func(b *testing.B) {
		req := httptest.NewRequest(http.MethodGet, "/cache/c?key=example_key", nil)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			w := &discardWriter{header: make(http.Header)}
			for pb.Next() {
				clear(w.header)
				handler.ServeHTTP(w, req)
				if w.status != http.StatusOK {
					b.Errorf("status %d", w.status)
					return
				}
			}
		})
	})
}

func benchmarkGet(b *testing.B, handler http.Handler, req *http.Request) {
	w := &discardWriter{header: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.header)
		handler.ServeHTTP(w, req)
	}
	if w.status != http.StatusOK {
		b.Fatalf("status %d", w.status)
	}
}

func BenchmarkSet(b *testing.B) {
	h, err := New(Handler{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	req := httptest.NewRequest(http.MethodPut, "/cache/c?key=example_key&ttl_seconds=60", nil)
	benchmarkUpload(b, h.HTTPHandler(), req, bytes.Repeat([]byte("v"), 100))
}

// benchmarkUpload serves req, with value as its body each time, and
// checks that the last answer was 204.
func benchmarkUpload(b *testing.B, handler http.Handler, req *http.Request, value []byte) {
	body := &rewindBody{}
	req.Body = body
	req.ContentLength = int64(len(value))
	w := &discardWriter{header: make(http.Header)}
	b.ReportAllocs()
	for b.Loop() {
		body.Reset(value)
		clear(w.header)
		handler.ServeHTTP(w, req)
	}
	if w.status != http.StatusNoContent {
		b.Fatalf("status %d", w.status)
	}
}

// BenchmarkGetLoopback measures small GETs over real HTTP on loopback.
func BenchmarkGetLoopback(b *testing.B) {
	h, err := New(Handler{})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	h.state.store.set("c", "example_key", bytes.Repeat([]byte("v"), 100), time.Hour)
	srv := httptest.NewServer(h.HTTPHandler())
	defer srv.Close()
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	defer client.CloseIdleConnections()
	url := srv.URL + "/cache/c?key=example_key"

	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Get(url)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, bufio.NewReader(resp.Body))
			resp.Body.Close()
		}
	})
}

type rewindBody struct{ bytes.Reader }
