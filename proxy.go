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
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// errUpstreamTimeout is the cause of the upstream context when the
// handler's timeout, not the client, ended the exchange.
var errUpstreamTimeout = errors.New("upstream timeout")

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
// streams the answer back. It returns the status the client got, and
// whether the answer was cut off after its status was sent.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, c *call) (status int, cutOff bool) {
	rg := c.region
	var done func(error)
	var wait time.Duration
	var ok bool
	if c.op == opSubscribe {
		wait, ok = rg.state.breaker.admitLongPoll()
		done = rg.state.breaker.record
	} else {
		done, wait, ok = rg.state.breaker.allow()
	}
	if !ok {
		// The path every request takes while a region is down: cheap.
		rg.metrics.rejections.Inc()
		c.breakerOpen = true
		return (&refusal{status: http.StatusServiceUnavailable, msg: rg.rejectMsg + strconv.FormatInt(retryAfterSeconds(wait), 10) + " s",
			retryAfter: wait}).write(w), false
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

	timeout, transport := h.timeout, rg.state.transport
	if c.op == opSubscribe {
		// Long polls have their own pool: they hold connections for
		// minutes and must not crowd out the short requests.
		timeout, transport = h.subscribeTimeout, rg.state.longPoll
	}
	ctx, cancel := context.WithTimeoutCause(r.Context(), timeout, errUpstreamTimeout)
	defer cancel()

	// WithContext on an empty request: the one copy it makes is the
	// request we send (filling a request first would copy it again).
	out := (&http.Request{}).WithContext(ctx)
	out.Method = c.op.method()
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
		if c.bodySize == 0 {
			out.Body = http.NoBody
		} else {
			body = newLimitedBody(w, r, limit)
			out.Body = body
			out.ContentLength = c.bodySize // -1 streams chunked
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
		status, outcome = h.roundTripFailed(ctx, w, r, c, body, err)
		return status, false
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
		// The region broke off mid-answer (or the timeout hit).
		outcome = errUpstreamFailure
		h.logger.Warn("upstream answer cut off", zap.String("region", rg.name), zap.String("op", c.op.String()), zap.Error(unwrapURLError(readErr)))
		return status, true
	case writeErr != nil:
		outcome = errExcluded // the client went away
	}
	return status, false
}

// roundTripFailed answers a request whose upstream exchange failed before
// a response arrived. It returns the status sent and whether the region is
// to blame. The order matters: our timeout is checked before a departed
// client, because ending a stalled upload also ends the client's context.
func (h *Handler) roundTripFailed(ctx context.Context, w http.ResponseWriter, r *http.Request, c *call, body *limitedBody, err error) (int, error) {
	rg := c.region
	switch {
	case body != nil && body.state.Load() == bodyTooLarge:
		if c.op == opPublish {
			return refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
				"message exceeds max_message_size (%d bytes); nothing was published", h.maxMessageSize)).write(w), errExcluded
		}
		return refuse(http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"value exceeds max_item_size (%d bytes); nothing was stored", h.maxItemSize)).write(w), errExcluded
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
			return refuse(http.StatusRequestTimeout, fmt.Sprintf(
				"the value did not arrive within %s; nothing was stored", h.timeout)).write(w), errExcluded
		}
		return refuse(http.StatusGatewayTimeout, fmt.Sprintf(
			"region %s did not answer within %s", rg.name, h.timeout)).write(w), errUpstreamFailure
	case r.Context().Err() != nil:
		// The client went away; nobody reads this, but the access log does.
		w.WriteHeader(499)
		return 499, errExcluded
	case body != nil && body.state.Load() == bodyFailed:
		return refuse(http.StatusBadRequest, "reading the request body failed; nothing was stored").write(w), errExcluded
	}
	err = unwrapURLError(err)
	h.logger.Warn("region unreachable", zap.String("region", rg.name), zap.String("endpoint", rg.endpoint), zap.Error(err))
	return refuse(http.StatusBadGateway, fmt.Sprintf(
		"region %s could not be reached (%s)", rg.name, describeNetError(err))).write(w), errUpstreamFailure
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
