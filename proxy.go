package momento

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
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
//
// Only the region's own behaviour counts against it: a transport error once
// the request reached the network, a 5xx, no answer headers within timeout
// (after the last byte of an upload), or a pause of more than timeout in
// the middle of its answer. How fast the client sends or reads is the
// client's business: it never makes the exchange fail, and when it does
// fail because of the client (a stalled upload, a client gone), nothing is
// counted.
func (h *Handler) proxy(w http.ResponseWriter, r *http.Request, c *call) (status int, cutOff bool) {
	rg := c.region
	if c.op == opSubscribe {
		// A long poll forwarded as it is (the topic hub off).
		slot, rf := h.app.admitWaiter(r, waitLongPoll)
		if rf != nil {
			return rf.write(w), false
		}
		defer slot.release()
		release, rf := openSubscription(rg, slot.network)
		if rf != nil {
			return rf.write(w), false
		}
		defer release()
		// Each is a call to the region: it counts against the client's
		// max_ops_per_client, as any other.
		if rf := h.app.admitOp(r, c); rf != nil {
			return rf.write(w), false
		}
	}
	var body *limitedBody
	limit := h.maxItemSize - int64(len(c.key))
	if c.op == opPublish {
		limit = h.maxMessageSize
	}
	if (c.op == opSet || c.op == opPublish) && c.bodySize != 0 {
		body = newLimitedBody(w, r, limit)
	}
	var whole []byte // an upload read before it was sent (see probeUploadWait)
	var done func(error)
	var wait time.Duration
	var ok bool
	if c.op == opSubscribe {
		wait, ok = rg.state.breaker.admitLongPoll()
		done = rg.state.breaker.record
	} else {
		if body != nil && rg.state.breaker.probing() {
			var rf *refusal
			var release func()
			if whole, release, rf = h.wholeUpload(r, c, body, rg); rf != nil {
				endUpload(w, r, body)
				return rf.write(w), false
			}
			defer release()
		}
		done, wait, ok = rg.state.breaker.allow()
	}
	if !ok {
		// Answered with the upload unread: at once, closing an HTTP/1
		// connection (net/http would read up to 256 KiB of it first).
		if body != nil {
			endUpload(w, r, body)
		} else if r.ProtoMajor == 1 && r.ContentLength != 0 {
			closeAfterAnswer(w)
		}
		// The path every request takes while a region is down: cheap.
		rg.metrics.rejections.Inc()
		c.breakerOpen = true
		return (&refusal{status: http.StatusServiceUnavailable, msg: rg.rejectMsg + strconv.FormatInt(retryAfterSeconds(wait), 10) + " s",
			retryAfter: wait}).write(w), false
	}
	// Until the exchange says otherwise, it says nothing about the region.
	outcome := errExcluded
	// settled is set when the outcome was told when the answer's headers
	// arrived (a half-open breaker's probe); a failure after that is
	// recorded on its own.
	settled := false
	start := time.Now()
	defer func() {
		switch {
		case !settled:
			done(outcome)
		case errors.Is(outcome, errUpstreamFailure):
			rg.state.breaker.record(outcome)
		}
		elapsed := time.Since(start)
		rg.metrics.duration[c.op].Observe(elapsed.Seconds())
		if ce := h.logger.Check(zapcore.DebugLevel, "proxied"); ce != nil {
			ce.Write(zap.String("region", rg.name), zap.String("op", c.op.String()), zap.String("cache", c.cache),
				zap.Int("status", status), zap.Duration("duration", elapsed))
		}
	}()

	answerTimeout, transport := h.timeout, rg.state.transport
	if c.op == opSubscribe {
		// Long polls have their own pool: they hold connections for
		// minutes and must not crowd out the short requests.
		answerTimeout, transport = h.subscribeTimeout, rg.state.longPoll
	}
	ctx, cancel := context.WithCancelCause(r.Context())
	defer cancel(nil)
	ex := &exchange{}
	ex.timer = time.AfterFunc(answerTimeout, func() {
		ex.clientStalled.Store(body != nil && body.reading.Load())
		cancel(errUpstreamTimeout)
	})
	defer ex.timer.Stop()

	// WithContext on an empty request: the one copy it makes is the
	// request we send (filling a request first would copy it again).
	out := (&http.Request{}).WithContext(httptrace.WithClientTrace(ctx, ex.trace()))
	out.Method = c.op.method()
	out.URL = &url.URL{Scheme: rg.scheme, Host: rg.host, Path: c.upstreamPath(rg.basePath), RawQuery: c.upstreamQuery()}
	out.Proto, out.ProtoMajor, out.ProtoMinor = "HTTP/1.1", 1, 1
	out.Header = http.Header{"Authorization": rg.token.authHeader(), "User-Agent": userAgent}
	out.Host = rg.host
	if c.op == opPublish {
		out.Header["Content-Type"] = []string{c.contentType}
	}
	switch {
	case whole != nil:
		out.Body = io.NopCloser(bytes.NewReader(whole))
		out.ContentLength = int64(len(whole))
	case body != nil:
		// Each part of the upload that arrives gives the region the full
		// timeout again: a slow client is not the region's fault.
		body.progress = func() { ex.timer.Reset(answerTimeout) }
		out.Body = body
		out.ContentLength = c.bodySize // -1 streams chunked
		// On failure RoundTrip waits for the transport to stop reading the
		// body, and a stalled client would hold it forever: when the
		// exchange ends (timeout, client gone), end the upload too.
		defer context.AfterFunc(ctx, body.end)()
	case c.op == opSet || c.op == opPublish:
		out.Body = http.NoBody
	}

	resp, err := transport.RoundTrip(out)
	if (c.op == opSet || c.op == opDelete) && (err != nil || resp.StatusCode < 400 || resp.StatusCode >= 500) {
		// Unless the region refused the write (4xx: nothing changed), the
		// item may have changed: reads from now on see it, before the
		// client hears back.
		rg.state.reads.wrote(readKey{c.cache, c.key}, c)
	}
	if body != nil {
		// RoundTrip returns when the answer's headers arrive, or it fails,
		// while the transport may still be sending the upload: end that
		// before a byte of the answer goes out.
		endUpload(w, r, body)
	}
	if err != nil {
		status, outcome = h.roundTripFailed(ctx, w, r, c, body, ex, err)
		return status, false
	}
	ex.timer.Stop()
	defer resp.Body.Close()
	if b, configured := rg.budget(c.op); b != nil {
		b.answered(resp.StatusCode, configured, time.Now())
	}
	if resp.StatusCode < 500 && c.op != opSubscribe && rg.state.breaker.probing() {
		// A probe, and the region answered: say so now. Told after the
		// client has read the answer, at its own pace, the outcome would
		// hold the probe slot, and keep a recovered region's breaker from
		// closing, for as long as the client took (up to clientStall).
		done(nil)
		settled = true
	}

	copyAnswerHeaders(w.Header(), resp.Header, c, resp.StatusCode)
	w.WriteHeader(resp.StatusCode)
	status = resp.StatusCode
	if resp.StatusCode >= 500 {
		outcome = errUpstreamFailure
	} else {
		outcome = nil
	}

	var guard *stallGuard
	if resp.ContentLength < 0 || resp.ContentLength > smallAnswer {
		// An answer larger than one write holds its upstream connection
		// and a copy buffer while the client takes it: a client that stops
		// reading is dropped after clientStall, as a shared call's is.
		guard = &stallGuard{rc: http.NewResponseController(w), stall: clientStall}
	}
	readErr, writeErr, slowClient := ex.copyAnswer(w, guard, resp.Body, resp.ContentLength, h.timeout)
	switch {
	case readErr != nil && (r.Context().Err() != nil || slowClient):
		// The client left mid-answer, which cancelled the upstream read, or
		// read so slowly that the region's side of the exchange went idle.
		outcome = errExcluded
		return status, readErr != nil && r.Context().Err() == nil
	case readErr != nil:
		// The region broke off or paused past the timeout mid-answer.
		outcome = errUpstreamFailure
		h.logger.Warn("upstream answer cut off", zap.String("region", rg.name), zap.String("op", c.op.String()), zap.Error(unwrapURLError(readErr)))
		return status, true
	case writeErr != nil:
		outcome = errExcluded // the client went away
	}
	return status, false
}

// exchange is one upstream call's timing and trace: the timer that ends it
// when the region is too slow, and whether the request reached the network.
type exchange struct {
	timer *time.Timer
	// clientStalled records that the timer fired while the client's upload
	// was the one being waited for.
	clientStalled atomic.Bool
	// dialed and wrote record that the request reached the network (a
	// lookup or dial began, or headers were written). A failure before
	// either is the gateway's own, never the region's.
	dialed, wrote atomic.Bool
}

func (ex *exchange) trace() *httptrace.ClientTrace {
	reached := func() { ex.dialed.Store(true) }
	return &httptrace.ClientTrace{
		DNSStart:     func(httptrace.DNSStartInfo) { reached() },
		ConnectStart: func(string, string) { reached() },
		WroteHeaders: func() { ex.wrote.Store(true) },
	}
}

// copyAnswer streams the region's answer to the client and tells a failing
// region (readErr) from a departed client (writeErr). Each read from the
// region must return within timeout; each write to the client, within the
// guard's stall limit, if there is a guard.
//
// slowClient reports that the client set the pace: one write took longer
// than timeout, or writes to the client took most of the exchange and at
// least clientBackPressure. The region is read only as fast as the client
// reads, so a region that ends an answer it could not send in time (a send
// deadline of its own) was held up by the client, not failing.
func (ex *exchange) copyAnswer(w io.Writer, guard *stallGuard, r io.Reader, size int64, timeout time.Duration) (readErr, writeErr error, slowClient bool) {
	pool := &bufPool
	if size >= largeBody {
		pool = &largeBufPool
	}
	bp := pool.Get().(*[]byte)
	defer pool.Put(bp)
	buf := *bp
	began := time.Now()
	var writing time.Duration
	for {
		ex.timer.Reset(timeout)
		n, err := r.Read(buf)
		ex.timer.Stop()
		if n > 0 {
			start := time.Now()
			if guard != nil {
				guard.arm()
			}
			_, werr := w.Write(buf[:n])
			if guard != nil {
				guard.disarm()
			}
			if werr != nil {
				return nil, werr, slowClient
			}
			took := time.Since(start)
			writing += took
			slowClient = slowClient || took > timeout
		}
		if err == io.EOF {
			return nil, nil, slowClient
		}
		if err != nil {
			return err, nil, slowClient || writing >= clientBackPressure && writing > time.Since(began)/2
		}
	}
}

// clientBackPressure is how long writes to a client must have blocked, in
// all, before a region's cut-off can be blamed on that client. Without a
// floor, an answer cut off within microseconds could be blamed on a write
// the scheduler merely paused (seen under -race on 2 cores); no region's
// send deadline is that short.
const clientBackPressure = 20 * time.Millisecond

// passedHeaders are the region's answer headers a client may see. The
// list is closed, so that nothing the region (or anything between) sends
// can set cookies, CORS or authentication challenges on the gateway's
// origin, or describe a connection that is not the client's.
var passedHeaders = []string{"Content-Length", "Cache-Control", "Etag", "Last-Modified", "Expires"}

// copyAnswerHeaders sets the headers of a proxied answer: the passed ones,
// Retry-After on 429 and 503, and always a Content-Type the gateway chose
// with nosniff, so no answer is ever taken for a page.
func copyAnswerHeaders(dst, src http.Header, c *call, status int) {
	for _, k := range passedHeaders {
		if v := src[k]; len(v) > 0 {
			dst[k] = v
		}
	}
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		// Momento documents no Retry-After on its 429 (its account limits
		// are so many a second) and 503: a client is told when to come
		// back all the same, as for the gateway's own limits.
		dst["Retry-After"] = oneSecond
		if v := src["Retry-After"]; len(v) > 0 {
			dst["Retry-After"] = v
		}
	}
	dst["Content-Type"] = answerType(c, src.Get("Content-Type"), status)
	dst["X-Content-Type-Options"] = noSniff
}

var (
	oneSecond   = []string{"1"}
	octetStream = []string{"application/octet-stream"}
	jsonType    = []string{"application/json"}
)

// answerType is the Content-Type of a proxied answer: a cache value is
// bytes and a subscribe page JSON, whatever the region says; other answers
// keep a plain-text or JSON type, and are plain text otherwise.
func answerType(c *call, upstream string, status int) []string {
	if status >= 200 && status < 300 {
		switch c.op {
		case opGet:
			return octetStream
		case opSubscribe:
			return jsonType
		}
	}
	mt, _, _ := strings.Cut(upstream, ";")
	switch strings.ToLower(strings.TrimSpace(mt)) {
	case "text/plain", "application/json":
		return []string{upstream}
	}
	return plainText
}

// userAgent names the gateway to the region.
var userAgent = []string{"caddy-momento/" + moduleVersion()}

// moduleVersion is this module's version in the binary ("devel" in a
// build from a checkout).
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range append([]*debug.Module{&bi.Main}, bi.Deps...) {
			if m.Path == "github.com/momento-gateway/caddy-momento" {
				if m.Replace != nil || m.Version == "" || m.Version == "(devel)" || m.Version == "v0.0.0" {
					return "devel"
				}
				return m.Version
			}
		}
	}
	return "devel"
}

// roundTripFailed answers a request whose upstream exchange failed before
// a response arrived. It returns the status sent and whether the region is
// to blame. The order matters: our timeout is checked before a departed
// client, because ending a stalled upload also ends the client's context.
func (h *Handler) roundTripFailed(ctx context.Context, w http.ResponseWriter, r *http.Request, c *call, body *limitedBody, ex *exchange, err error) (int, error) {
	rg := c.region
	timedOut := errors.Is(context.Cause(ctx), errUpstreamTimeout)
	switch {
	case body != nil && body.state.Load() == bodyTooLarge:
		return h.uploadTooLarge(c).write(w), errExcluded
	case timedOut && c.op == opSubscribe:
		// A long poll that saw no message within subscribe_timeout: an empty
		// page, and the client polls again with the same cursor.
		w.Header()["Content-Type"] = jsonType
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, `{"items":[]}`)
		return http.StatusOK, errExcluded
	case timedOut && ex.clientStalled.Load():
		// The client stopped sending its upload: its own problem.
		if c.op == opPublish {
			return refuse(http.StatusRequestTimeout, fmt.Sprintf(
				"the message stopped arriving for %s; nothing was published", h.timeout)).write(w), errExcluded
		}
		return refuse(http.StatusRequestTimeout, fmt.Sprintf(
			"the value stopped arriving for %s; nothing was stored", h.timeout)).write(w), errExcluded
	case timedOut:
		return refuse(http.StatusGatewayTimeout, fmt.Sprintf(
			"region %s did not answer within %s", rg.name, h.timeout)).write(w), errUpstreamFailure
	case r.Context().Err() != nil:
		// The client went away; nobody reads this, but the access log does.
		w.WriteHeader(499)
		return 499, errExcluded
	case body != nil && body.state.Load() == bodyFailed:
		return refuse(http.StatusBadRequest, "reading the request body failed; "+nothingDone(c.op)).write(w), errExcluded
	case !ex.dialed.Load() && !ex.wrote.Load():
		// Nothing reached the network: the request could not be built. A
		// bug of the gateway's, or a request it should have refused, and
		// either way not the region's doing.
		h.logger.Error("upstream request not sent", zap.String("region", rg.name), zap.String("op", c.op.String()), zap.Error(unwrapURLError(err)))
		return refuse(http.StatusInternalServerError, "the gateway could not send this request to the region").write(w), errExcluded
	case localExhaustion(err):
		// The gateway's own machine is out of sockets (file descriptors,
		// ports, buffers), which clients can bring about by holding
		// connections: not the region's doing, and it must not open the
		// region's breaker for everyone.
		h.logger.Error("gateway out of sockets: raise the open files limit (LimitNOFILE), or bound slow clients with the server's read_body timeout",
			zap.String("region", rg.name), zap.Error(unwrapURLError(err)))
		return (&refusal{status: http.StatusServiceUnavailable, msg: "the gateway is out of connections; try again shortly",
			retryAfter: time.Second}).write(w), errExcluded
	}
	err = unwrapURLError(err)
	h.logger.Warn("region unreachable", zap.String("region", rg.name), zap.String("endpoint", rg.endpoint), zap.Error(err))
	return refuse(http.StatusBadGateway, fmt.Sprintf(
		"region %s could not be reached (%s)", rg.name, describeNetError(err))).write(w), errUpstreamFailure
}

// localExhaustion reports whether err is this machine running out of
// something a connection needs, rather than the region failing.
func localExhaustion(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.EADDRNOTAVAIL)
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

// Copy buffers: small answers need little, and large values stream with
// fewer, larger reads and writes (a 1 MiB value is 8 round trips through
// the kernel instead of 32).
var (
	bufPool      = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
	largeBufPool = sync.Pool{New: func() any { b := make([]byte, 128<<10); return &b }}
)

// largeBody is the size from which an answer gets a large buffer.
const largeBody = 256 << 10
