package momento

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// errTooLarge ends a streamed upload that passed max_item_size.
var errTooLarge = errors.New("value exceeds max_item_size")

// States of a client's upload as the transport reads it.
const (
	bodyReading int32 = iota
	bodyComplete
	bodyTooLarge
	bodyFailed
)

// errUploadEnded is what the transport reads from an upload the gateway
// ended because it answered first.
var errUploadEnded = errors.New("the gateway answered before the upload ended")

// limitedBody streams a client's value upstream and stops it, with an
// error that aborts the upstream request, the moment it passes the limit.
//
// The transport reads it on its own goroutine, which can outlive the
// exchange: a region may answer (401, 413, 5xx) before it has read the
// whole upload, and then RoundTrip returns while the transport is still
// sending. The client's body belongs to the client's connection, whose
// next request starts where the body ends, so only the handler may decide
// what happens to the rest: the transport never closes it (Close is a
// no-op, as with httputil's noopCloseReader), and endUpload ends the
// transport's reads before the gateway answers.
type limitedBody struct {
	rc    io.ReadCloser
	limit int64
	// abort ends a read of the client's body that is waiting for bytes.
	abort func()
	// progress, when set, is called each time bytes of the body arrive.
	progress func()
	// reading is true while a read waits for the client's bytes.
	reading atomic.Bool
	n       int64
	state   atomic.Int32
	// cutOff is set when end had to abort a pending read of the client's
	// body: on HTTP/1 its connection now has a past read deadline.
	cutOff atomic.Bool

	// mu is held for each read of the client's body, so end can wait for
	// the one in flight; ended is set under it.
	mu    sync.Mutex
	ended bool
}

func (b *limitedBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		if b.state.Load() == bodyComplete {
			return 0, io.EOF
		}
		return 0, errUploadEnded
	}
	b.reading.Store(true)
	n, err := b.rc.Read(p)
	b.reading.Store(false)
	if n > 0 && b.progress != nil {
		b.progress()
	}
	b.n += int64(n)
	if b.n > b.limit {
		b.state.Store(bodyTooLarge)
		return 0, errTooLarge
	}
	switch {
	case err == io.EOF:
		b.state.CompareAndSwap(bodyReading, bodyComplete)
	case err != nil:
		b.state.CompareAndSwap(bodyReading, bodyFailed)
	}
	return n, err
}

// Close leaves the client's body alone: the transport calls it from its
// own goroutine, and closing the server's body there would drain or
// abandon it behind net/http's back (Caddy wraps the body, so net/http
// cannot see an early close and would read the rest of the upload as the
// connection's next request).
func (b *limitedBody) Close() error { return nil }

func newLimitedBody(w http.ResponseWriter, r *http.Request, limit int64) *limitedBody {
	b := &limitedBody{rc: r.Body, limit: limit}
	// Closing an HTTP/2 or HTTP/3 request body resets its stream only. On
	// HTTP/1 a past read deadline ends the pending read (the connection is
	// then closed after the answer, see endUpload); a writer without read
	// deadlines gets its body closed instead.
	rc := http.NewResponseController(w)
	b.abort = func() {
		if r.ProtoMajor != 1 || rc.SetReadDeadline(time.Now()) != nil {
			_ = r.Body.Close()
		}
	}
	return b
}

// end makes sure nothing reads the client's body after it returns: later
// reads by the transport end with errUploadEnded, and a read still
// waiting for the client's bytes is aborted and waited for.
func (b *limitedBody) end() {
	if !b.mu.TryLock() {
		b.cutOff.Store(true)
		b.abort()
		b.mu.Lock()
	}
	b.ended = true
	b.mu.Unlock()
}

// endUpload ends the upload before the gateway answers, and makes sure an
// upload the region did not take whole cannot put the client's connection
// out of step: on HTTP/1 the answer closes the connection (the rest of the
// body is never read as a request), on HTTP/2 and HTTP/3 the request
// stream is reset.
func endUpload(w http.ResponseWriter, r *http.Request, b *limitedBody) {
	b.end()
	if b.state.Load() == bodyComplete && !b.cutOff.Load() {
		return
	}
	if r.ProtoMajor == 1 {
		closeAfterAnswer(w)
	} else {
		_ = r.Body.Close()
	}
}

// unreadBodyToDrain is the most of a refused request's body that is left
// for net/http to read after the answer, so that the connection stays
// open (net/http reads up to 256 KiB).
const unreadBodyToDrain = 256 << 10

// closeAfterAnswer closes an HTTP/1 connection after the answer the way
// net/http does for a body past http.MaxBytesReader's limit: the answer
// says Connection: close, and the connection is half-closed first and shut
// only after net/http's grace period, so that a client still sending its
// upload reads the answer instead of a connection reset. A bare
// Connection: close would lose the answer to about half of curl's uploads.
// MaxBytesReader tells net/http through the innermost ResponseWriter,
// which Caddy wraps.
func closeAfterAnswer(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	inner := w
	for {
		u, ok := inner.(interface{ Unwrap() http.ResponseWriter })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	// One byte over a limit of zero: the read reports the limit hit.
	_, _ = http.MaxBytesReader(inner, io.NopCloser(strings.NewReader("x")), 0).Read(make([]byte, 1))
}

// uploadTooLarge refuses an upload that passed its limit as it arrived
// (one that declared its size was refused at the edge).
func (h *Handler) uploadTooLarge(c *call) *refusal {
	if c.op == opPublish {
		return refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"message exceeds max_message_size (%d bytes); nothing was published", h.maxMessageSize))
	}
	return refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
		"item exceeds max_item_size (%d bytes, key plus value); nothing was stored", h.maxItemSize))
}

// probeUploadWait is how long an upload may take to arrive whole while its
// region's breaker is half-open (the breaker's probe_upload_wait). Then
// the region takes only a few probes (half_open_requests), and an upload
// sent as it arrives would hold its probe slot at the client's pace: a
// client trickling its body could keep a recovered region's breaker from
// closing for as long as it liked. So an upload probes only once it is
// whole, read into memory first; one that takes longer is refused with
// Retry-After, and sent as it arrives once the breaker has closed.
func probeUploadWait(rg *region) time.Duration {
	return time.Duration(rg.state.breaker.probeUploadWait.Load())
}

// maxProbeUploadBytes bounds the uploads a region reads whole at once
// while its breaker is half-open (each reserves its Content-Length, or its
// limit when chunked): three of Momento's largest items. Past it, an
// upload is refused at once, unread, with Retry-After.
const maxProbeUploadBytes = 16 << 20

// wholeUpload reads the rest of an upload (at most its limit) before it
// may probe a half-open breaker, or says why it may not. release gives
// back what the upload reserved of maxProbeUploadBytes, once the upstream
// exchange no longer needs the bytes.
func (h *Handler) wholeUpload(r *http.Request, c *call, body *limitedBody, rg *region) (whole []byte, release func(), rf *refusal) {
	nothing := nothingDone(c.op)
	n := body.limit
	if c.bodySize >= 0 {
		n = min(c.bodySize, body.limit)
	}
	if rg.state.probeUploads.Add(n) > maxProbeUploadBytes {
		rg.state.probeUploads.Add(-n)
		return nil, nil, &refusal{status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: fmt.Sprintf(
			"region %s is recovering (its circuit breaker is half-open), and takes uploads only once they have arrived whole; too many are arriving now; %s; retry in 1 s", rg.name, nothing)}
	}
	release = func() { rg.state.probeUploads.Add(-n) }
	wait := probeUploadWait(rg)
	timer := time.AfterFunc(wait, body.abort)
	buf := bytes.NewBuffer(make([]byte, 0, min(max(c.bodySize, 0), body.limit+1, 64<<10)))
	_, err := buf.ReadFrom(body)
	timedOut := !timer.Stop()
	if timedOut {
		// The wait ran out, if only just: an HTTP/1 connection now has a
		// past read deadline (which also ends the request's context), and
		// closes after the answer (endUpload).
		body.cutOff.Store(true)
	}
	if err == nil {
		return buf.Bytes(), release, nil
	}
	release()
	switch {
	case body.state.Load() == bodyTooLarge:
		return nil, nil, h.uploadTooLarge(c)
	case timedOut:
		return nil, nil, &refusal{status: http.StatusServiceUnavailable, retryAfter: time.Second, msg: fmt.Sprintf(
			"region %s is recovering (its circuit breaker is half-open) and takes an upload only once it has arrived whole, within %s; %s; retry in 1 s", rg.name, wait, nothing)}
	case r.Context().Err() != nil:
		return nil, nil, &refusal{status: 499} // the client went away; for the access log
	}
	return nil, nil, refuse(http.StatusBadRequest, "reading the request body failed; "+nothing)
}

// nothingDone tells the client of an upload that failed that it left no
// trace: a set stored nothing, a publish published nothing.
func nothingDone(o op) string {
	if o == opPublish {
		return "nothing was published"
	}
	return "nothing was stored"
}
