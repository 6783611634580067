package momento

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// errUpstreamTimeout is the cause of the upstream context when the
// handler's timeout, not the client, ended the exchange.
var errUpstreamTimeout = errors.New("upstream timeout")

// errTooLarge ends a streamed upload that passed max_item_size.
var errTooLarge = errors.New("value exceeds max_item_size")

// newTransport is one region's connection pool. Every request of a region
// goes to one host, so the per-host idle pool is sized for hundreds of
// concurrent clients: a small pool would open a new connection for many
// requests under load.
//
// The connection buffers stay at net/http's 4 KiB: values stream through
// copyBody's 32 KiB buffer, which reads straight past a small bufio.Reader,
// and larger per-connection buffers only cost memory (hundreds of pooled
// connections, and long polls that hold one for minutes).
func newTransport() *http.Transport {
	return &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   5 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 10 * time.Second,
		// Values pass through byte for byte; never ask for gzip.
		DisableCompression: true,
	}
}

// proxy sends the call to its region through the region's breaker and
// streams the answer back. It returns the status the client got.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, c *call, rg *region) (status int) {
	var done func(error)
	var wait time.Duration
	var ok bool
	if c.op == opSubscribe {
		wait, ok = rg.pooled.breaker.admitLongPoll()
		done = rg.pooled.breaker.record
	} else {
		done, wait, ok = rg.pooled.breaker.allow()
	}
	if !ok {
		return rg.reject(w, c, wait)
	}
	// Until the exchange says otherwise, it says nothing about the region.
	outcome := errExcluded
	start := time.Now()
	defer func() {
		done(outcome)
		elapsed := time.Since(start)
		rg.metrics.duration[c.op].Observe(elapsed.Seconds())
		if ce := h.logger.Check(zapcore.DebugLevel, "proxied"); ce != nil {
			ce.Write(zap.String("region", rg.name), zap.String("op", c.op.String()), zap.String("cache", c.cache),
				zap.Int("status", status), zap.Duration("duration", elapsed))
		}
	}()

	timeout, transport := h.timeout, rg.pooled.transport
	if c.op == opSubscribe {
		// Long polls have their own pool: they hold connections for
		// minutes and must not crowd out the short requests.
		timeout, transport = h.subscribeTimeout, rg.pooled.longPoll
	}
	ctx, cancel := context.WithTimeoutCause(r.Context(), timeout, errUpstreamTimeout)
	defer cancel()

	// WithContext on an empty request: the one copy it makes is the
	// request we send (filling a request first would copy it again).
	out := (&http.Request{}).WithContext(ctx)
	out.Method = r.Method
	out.URL = &url.URL{Scheme: rg.scheme, Host: rg.host, Path: c.upstreamPath(rg.basePath), RawQuery: c.upstreamQuery()}
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	out.Header = http.Header{"Authorization": rg.token.authHeader()}
	out.Host = rg.host
	var body *limitedBody
	if c.op == opSet || c.op == opPublish {
		limit := h.maxItemSize
		if c.op == opPublish {
			limit = h.maxMessageSize
			out.Header["Content-Type"] = []string{c.contentType}
		}
		if r.ContentLength == 0 {
			out.Body = http.NoBody
		} else {
			body = newLimitedBody(w, r, limit)
			out.Body = body
			out.ContentLength = r.ContentLength // -1 streams chunked
			// On failure RoundTrip waits for the transport to stop reading
			// the body, and a stalled client would hold it forever: when
			// the exchange ends (timeout, client gone), end the upload too.
			defer context.AfterFunc(ctx, body.end)()
		}
	}

	resp, err := transport.RoundTrip(out)
	if body != nil {
		// RoundTrip returns when the answer's headers arrive, or it fails,
		// while the transport may still be sending the upload: end that
		// before a byte of the answer goes out.
		endUpload(w, r, body)
	}
	if err != nil {
		status, outcome = h.roundTripFailed(w, r, ctx, err, c, body, rg)
		return status
	}
	defer resp.Body.Close()

	hdr := w.Header()
	for k, v := range resp.Header {
		if !hopByHop(k) {
			hdr[k] = v
		}
	}
	w.WriteHeader(resp.StatusCode)
	status = resp.StatusCode
	if resp.StatusCode >= 500 {
		outcome = errUpstreamFailure
	} else {
		outcome = nil
	}

	readErr, writeErr := copyBody(w, resp.Body, resp.ContentLength)
	switch {
	case readErr != nil && r.Context().Err() != nil:
		// The client left mid-answer, which cancelled the upstream read.
		outcome = errExcluded
	case readErr != nil:
		// The region broke off mid-answer (or the timeout hit). The status
		// is already sent: abort the connection so the client cannot
		// mistake a truncated value for a whole one.
		outcome = errUpstreamFailure
		h.logger.Warn("upstream answer cut off", zap.String("region", rg.name), zap.String("op", c.op.String()), zap.Error(unwrapURLError(readErr)))
		c.status = status
		panic(http.ErrAbortHandler)
	case writeErr != nil:
		outcome = errExcluded // the client went away
	}
	return status
}

// reject answers a request the region's open breaker refused. It is the
// path every request takes while a region is down, so it stays cheap.
func (rg *region) reject(w http.ResponseWriter, c *call, wait time.Duration) int {
	rg.metrics.rejections.Inc()
	c.breakerState = "open"
	secs := strconv.FormatInt(retryAfterSeconds(wait), 10)
	w.Header()["Retry-After"] = []string{secs}
	return writeRefusal(w, &refusal{status: http.StatusServiceUnavailable, msg: rg.rejectMsg + secs + " s"})
}

// roundTripFailed answers a request whose upstream exchange failed before
// a response arrived. It returns the status sent and whether the region is
// to blame. The order matters: our timeout is checked before a departed
// client, because ending a stalled upload also ends the client's context.
func (h *Handler) roundTripFailed(w http.ResponseWriter, r *http.Request, ctx context.Context, err error, c *call, body *limitedBody, rg *region) (int, error) {
	switch {
	case body != nil && body.state.Load() == bodyTooLarge:
		if c.op == opPublish {
			return writeRefusal(w, refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
				"message exceeds max_message_size (%d bytes); nothing was published", h.maxMessageSize))), errExcluded
		}
		return writeRefusal(w, refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"value exceeds max_item_size (%d bytes); nothing was stored", h.maxItemSize))), errExcluded
	case errors.Is(context.Cause(ctx), errUpstreamTimeout) && c.op == opSubscribe:
		// A long poll that saw no message within subscribe_timeout: an empty
		// page, and the client polls again with the same cursor.
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"items":[]}`)
		return http.StatusOK, errExcluded
	case errors.Is(context.Cause(ctx), errUpstreamTimeout):
		if body != nil && body.state.Load() != bodyComplete {
			// The client stalled mid-upload.
			return writeRefusal(w, refuse(http.StatusRequestTimeout, fmt.Sprintf(
				"the value did not arrive within %s; nothing was stored", h.timeout))), errExcluded
		}
		return writeRefusal(w, refuse(http.StatusGatewayTimeout, fmt.Sprintf(
			"region %s did not answer within %s", rg.name, h.timeout))), errUpstreamFailure
	case r.Context().Err() != nil:
		// The client went away; nobody reads this, but the access log does.
		w.WriteHeader(499)
		return 499, errExcluded
	case body != nil && body.state.Load() == bodyFailed:
		return writeRefusal(w, refuse(http.StatusBadRequest, "reading the request body failed; nothing was stored")), errExcluded
	}
	err = unwrapURLError(err)
	h.logger.Warn("region unreachable", zap.String("region", rg.name), zap.String("endpoint", rg.endpoint), zap.Error(err))
	return writeRefusal(w, refuse(http.StatusBadGateway, fmt.Sprintf(
		"region %s could not be reached (%s)", rg.name, describeNetError(err)))), errUpstreamFailure
}

// unwrapURLError drops the *url.Error wrapper, whose message repeats the
// upstream URL and so the client's key.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// describeNetError names a transport failure in a few words a client can
// act on, without internal addresses.
func describeNetError(err error) string {
	var op *net.OpError
	if errors.As(err, &op) {
		switch op.Op {
		case "dial":
			return "connection failed"
		case "read":
			return "connection lost while reading"
		case "write":
			return "connection lost while writing"
		}
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "connection closed before an answer"
	}
	return "transport error"
}

// hopByHop reports headers that describe one connection and must not be
// copied to another (RFC 9110, section 7.6.1).
func hopByHop(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
		"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// Copy buffers: small answers need little, and large values stream with
// fewer, larger reads and writes (a 1 MiB value is 8 round trips through
// the kernel instead of 32).
var (
	bufPool      = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	largeBufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}
)

// largeBody is the size from which an answer gets a large buffer.
const largeBody = 256 << 10

// copyBody streams the answer to the client and tells a failing region
// (readErr) from a departed client (writeErr).
func copyBody(w io.Writer, r io.Reader, size int64) (readErr, writeErr error) {
	pool := &bufPool
	if size >= largeBody {
		pool = &largeBufPool
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil, werr
			}
		}
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return err, nil
		}
	}
}

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
	n     int64
	state atomic.Int32
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
	n, err := b.rc.Read(p)
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
	if r.ProtoMajor == 1 {
		// A past read deadline ends the pending read; the connection is
		// then closed after the answer (see endUpload).
		rc := http.NewResponseController(w)
		b.abort = func() { _ = rc.SetReadDeadline(time.Now()) }
	} else {
		// Closing an HTTP/2 or HTTP/3 request body resets its stream only.
		b.abort = func() { _ = r.Body.Close() }
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
