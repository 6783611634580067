package momentolocal

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.uber.org/zap"
)

// serveTopic answers POST (publish) and GET (subscribe) on
// /topics/{cache}/{topic}; path is what follows /topics/.
func (h *Handler) serveTopic(w http.ResponseWriter, r *http.Request, path string) {
	q, ok := h.admit(w, r)
	if !ok {
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed on /topics/: use POST to publish or GET to subscribe")
		return
	}
	cache, topic, hasTopic := strings.Cut(path, "/")
	if problem := checkName("cache", cache); problem != "" {
		writeError(w, http.StatusBadRequest, "invalid cache name: "+problem)
		return
	}
	if !hasTopic {
		writeError(w, http.StatusBadRequest, "missing topic name: use /topics/{cacheName}/{topicName}")
		return
	}
	if problem := checkName("topic", topic); problem != "" {
		writeError(w, http.StatusBadRequest, "invalid topic name: "+problem)
		return
	}
	var from, page uint64
	var problem string
	if r.Method == http.MethodGet {
		if from, problem = wholeNumber("sequence_number", q.sequenceNumber, q.hasSeqNumber); problem == "" {
			page, problem = wholeNumber("sequence_page", q.sequencePage, q.hasSeqPage)
		}
	}
	if problem != "" {
		writeError(w, http.StatusBadRequest, problem)
		return
	}
	if !h.cacheExists(w, cache) {
		return
	}

	if r.Method == http.MethodPost {
		if h.takeOp(w, limitPublishes) {
			h.publish(w, r, cache, topic, isBinary(r.Header.Get("Content-Type")))
		}
		return
	}
	if !h.takeSubscription(w) {
		return
	}
	defer h.state.limits.subscriptions.release()
	a, err := h.state.topics.subscribe(r.Context(), h.release, cache, topic, from, page)
	if errors.Is(err, errReleased) {
		// The config is being unloaded (a reload, say): an empty page, and
		// the client polls again, reaching the new config. Not a 503: a
		// gateway in front would count that against the region.
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"items":[]}`)
		return
	}
	if err != nil {
		return // the client has gone: there is nobody to answer
	}
	body := a.appendJSON(nil)
	vals := []string{"application/json", strconv.Itoa(len(body))}
	hdr := w.Header()
	hdr["Content-Type"] = vals[0:1:1]
	hdr["Content-Length"] = vals[1:2:2]
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// publish reads a message and publishes it, or nothing when the body is too
// large or cannot be read whole.
func (h *Handler) publish(w http.ResponseWriter, r *http.Request, cache, topic string, binary bool) {
	body, status, err := readBody(r, h.MaxMessageSize, func() error {
		return fmt.Errorf("message too large: it exceeds max_message_size (%d bytes); nothing was published", h.MaxMessageSize)
	})
	if err != nil {
		h.logger.Debug("not publishing", zap.String("cache", cache), zap.String("topic", topic), zap.Error(err))
		writeError(w, status, err.Error())
		return
	}
	if !binary && !utf8.Valid(body) {
		writeError(w, http.StatusBadRequest, "a text message must be valid UTF-8 (every Content-Type but application/octet-stream publishes text): publish other bytes as application/octet-stream")
		return
	}
	value := encodeValue(body, binary)
	if cost := int64(cap(value)) + messageOverhead + topicOverhead + int64(len(cache)+len(topic)); cost > h.MaxMemory {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf(
			"message too large: it would take %d bytes of memory, more than max_memory (%d bytes); nothing was published", cost, h.MaxMemory))
		return
	}
	h.state.topics.publish(cache, topic, value)
	w.WriteHeader(http.StatusNoContent)
}

// isBinary tells from a publish's Content-Type whether the message is
// binary. Only application/octet-stream is: Momento's documentation
// publishes with curl -d (application/x-www-form-urlencoded) and its
// video-streaming demo with application/json, and Momento takes both as
// text, so every other type, a malformed one or none is text too. The
// media type is compared without mime.ParseMediaType, which would refuse
// a malformed parameter that has no bearing on the answer.
func isBinary(contentType string) bool {
	mediaType, _, _ := strings.Cut(contentType, ";")
	return strings.EqualFold(strings.TrimSpace(mediaType), "application/octet-stream")
}

// encodeValue returns the JSON a subscriber receives for a message:
// {"text":"…"} or {"binary":"<standard base64>"}. Messages are kept so
// encoded, which spares re-encoding them for every subscriber. The buffer
// comes from slices.Grow, whose capacity is the allocator's size class, so
// that its capacity is what the message takes from max_memory.
func encodeValue(body []byte, binary bool) []byte {
	if binary {
		const pre, post = `{"binary":"`, `"}`
		v := slices.Grow([]byte(nil), len(pre)+base64.StdEncoding.EncodedLen(len(body))+len(post))
		v = append(v, pre...)
		v = base64.StdEncoding.AppendEncode(v, body)
		return append(v, post...)
	}
	// Room for the body unescaped; escaping grows it through append,
	// which also rounds to a size class.
	v := slices.Grow([]byte(nil), len(body)+len(`{"text":""}`))
	v = append(v, `{"text":`...)
	v = appendJSONString(v, body)
	return append(v, '}')
}

// appendJSONString appends s, which is valid UTF-8, as a JSON string.
func appendJSONString(dst, s []byte) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i, c := range s {
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		dst = append(dst, s[start:i]...)
		switch c {
		case '"', '\\':
			dst = append(dst, '\\', c)
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		start = i + 1
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// appendJSON appends the answer in Momento's shape:
//
//	{"items":[{"discontinuity":{…}},{"item":{"topic_sequence_number":0,"sequence_page":3,"value":{"text":"hi"}}}]}
func (a *answer) appendJSON(dst []byte) []byte {
	size := len(`{"items":[]}`) + 100
	for _, m := range a.messages {
		size += len(m.value) + 100
	}
	dst = slices.Grow(dst, size)
	dst = append(dst, `{"items":[`...)
	if a.gap {
		dst = append(dst, `{"discontinuity":{"last_topic_sequence":`...)
		dst = strconv.AppendUint(dst, a.last, 10)
		dst = append(dst, `,"new_topic_sequence":`...)
		dst = strconv.AppendUint(dst, a.next, 10)
		dst = append(dst, `,"new_sequence_page":`...)
		dst = strconv.AppendUint(dst, a.page, 10)
		dst = append(dst, `}}`...)
	}
	for i, m := range a.messages {
		if i > 0 || a.gap {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"item":{"topic_sequence_number":`...)
		dst = strconv.AppendUint(dst, m.seq, 10)
		dst = append(dst, `,"sequence_page":`...)
		dst = strconv.AppendUint(dst, a.page, 10)
		dst = append(dst, `,"value":`...)
		dst = append(dst, m.value...)
		dst = append(dst, `}}`...)
	}
	return append(dst, `]}`...)
}
