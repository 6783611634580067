// Command upstream is a fast, minimal stand-in for Momento's cache HTTP API,
// the upstream of bench/run.sh. It answers every proxy under test (and wrk
// directly) with as little work of its own as possible:
//
//   - GET /cache/{cache}?key=large answers 200 application/octet-stream with a
//     preallocated value of -large bytes (default 1 MiB); any other key gets
//     the -small value (default 100 bytes).
//   - PUT /cache/{cache}?… reads and discards the body and answers 204.
//   - Both require the header "authorization: <-token>" and answer 401
//     without it, so a proxy that forgets the token shows up as errors.
//   - GET /stats answers JSON {"new_conns":N,"requests":M}: TCP connections
//     accepted (http.Server ConnState StateNew) and cache requests served
//     since start, so run.sh can compute new upstream connections per 1,000
//     requests.
//
// It listens on -addr (loopback only: the address must be 127.0.0.1:port).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"
)

var (
	newConns atomic.Int64
	requests atomic.Int64
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18401", "listen address (must be on 127.0.0.1)")
	token := flag.String("token", "", "the token every cache request must carry in its authorization header (required)")
	small := flag.Int("small", 100, "size in bytes of the value served for every key except \"large\"")
	large := flag.Int("large", 1<<20, "size in bytes of the value served for key=large")
	flag.Parse()
	if *token == "" {
		log.Fatal("upstream: -token is required")
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || host != "127.0.0.1" {
		log.Fatalf("upstream: -addr %q: listen on 127.0.0.1:<port> only", *addr)
	}

	h := &handler{
		auth:  *token,
		small: value(*small),
		large: value(*large),
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("upstream: %v", err)
	}
	srv := &http.Server{
		Handler: h,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				newConns.Add(1)
			}
		},
	}
	log.Printf("upstream: listening on %s (small %d B, large %d B)", ln.Addr(), *small, *large)
	log.Fatal(srv.Serve(ln))
}

// body is a preallocated answer with its Content-Length header value.
type body struct {
	data   []byte
	length []string
}

func value(n int) body {
	return body{data: bytes.Repeat([]byte{'v'}, n), length: []string{strconv.Itoa(n)}}
}

type handler struct {
	auth         string
	small, large body
}

// Header values shared by every answer; net/http only reads them.
var (
	octetStream = []string{"application/octet-stream"}
	textPlain   = []string{"text/plain; charset=utf-8"}
)

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/stats" {
		w.Header()["Content-Type"] = []string{"application/json"}
		fmt.Fprintf(w, `{"new_conns":%d,"requests":%d}`+"\n", newConns.Load(), requests.Load())
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/cache/") {
		http.NotFound(w, r)
		return
	}
	requests.Add(1)
	if a := r.Header["Authorization"]; len(a) != 1 || a[0] != h.auth {
		w.Header()["Content-Type"] = textPlain
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, "Invalid authentication credentials\n")
		return
	}
	switch r.Method {
	case http.MethodGet:
		v := h.small
		if isLarge(r.URL.RawQuery) {
			v = h.large
		}
		hdr := w.Header()
		hdr["Content-Type"] = octetStream
		hdr["Content-Length"] = v.length
		_, _ = w.Write(v.data)
	case http.MethodPut:
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusNoContent)
	default:
		w.Header()["Allow"] = []string{"GET, PUT"}
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

// isLarge reports whether the query asks for key=large, without building a
// url.Values map.
func isLarge(q string) bool {
	for q != "" {
		var pair string
		pair, q, _ = strings.Cut(q, "&")
		if pair == "key=large" {
			return true
		}
	}
	return false
}
