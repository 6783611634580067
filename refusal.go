package momento

import (
	"io"
	"net/http"
	"strconv"
	"time"
)

// refusal is an answer the gateway gives itself, in Momento's style: a
// status code and a plain-text message that names the problem.
type refusal struct {
	status int
	msg    string
	allow  string // Allow header, for 405
	// retryAfter, when set, is sent as Retry-After (whole seconds).
	retryAfter time.Duration
}

func refuse(status int, msg string) *refusal { return &refusal{status: status, msg: msg} }

// Shared header values: refusals are a hot path when a breaker is open,
// and Header.Set would allocate a slice for each.
var (
	plainText = []string{"text/plain; charset=utf-8"}
	noSniff   = []string{"nosniff"}
)

// write answers the client with the refusal and returns its status. It
// writes the response itself rather than returning a caddyhttp.Error,
// because Caddy without handle_errors sends errors with an empty body, and
// API clients need the message.
func (rf *refusal) write(w http.ResponseWriter) int {
	hdr := w.Header()
	hdr["Content-Type"] = plainText
	hdr["X-Content-Type-Options"] = noSniff
	if rf.allow != "" {
		hdr.Set("Allow", rf.allow)
	}
	if rf.retryAfter > 0 {
		hdr["Retry-After"] = []string{strconv.FormatInt(retryAfterSeconds(rf.retryAfter), 10)}
	}
	w.WriteHeader(rf.status)
	_, _ = io.WriteString(w, rf.msg)
	return rf.status
}

// retryAfterSeconds rounds up, so a client that waits that long finds
// what it waits for (a breaker half-open, a free slot).
func retryAfterSeconds(d time.Duration) int64 {
	return int64((d + time.Second - 1) / time.Second)
}
