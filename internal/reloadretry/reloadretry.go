// Package reloadretry is a client transport for the tests that reload a
// running Caddy: it retries a request whose connection failed before any
// answer.
//
// Caddy binds its listeners with SO_REUSEPORT: during a reload the old and
// the new config's sockets both accept, and connections still queued on the
// old one when it closes are reset, unread. Clients of a reloading Caddy see
// this; the tests that reload retry such requests, which no handler saw.
package reloadretry

import (
	"errors"
	"io"
	"net/http"
	"syscall"
)

// Transport retries, twice at most, a request whose connection was reset or
// closed before an answer.
type Transport struct {
	// Next sends each attempt.
	Next http.RoundTripper
}

// RoundTrip implements http.RoundTripper.
func (rt Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	for attempt := 0; ; attempt++ {
		resp, err := rt.Next.RoundTrip(r)
		if err == nil || attempt == 2 || !(errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF)) {
			return resp, err
		}
		if r.GetBody != nil {
			if r.Body, err = r.GetBody(); err != nil {
				return nil, err
			}
		}
	}
}
