package momentolocal

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"
)

// serveCache answers GET, PUT and DELETE on /cache/{cache}. Errors are
// written here as plain text rather than returned, because Caddy without
// handle_errors would answer them with an empty body.
func (h *Handler) serveCache(w http.ResponseWriter, r *http.Request, cache string) {
	q, ok := h.admit(w, r)
	if !ok {
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodPut, http.MethodDelete:
	default:
		w.Header().Set("Allow", "GET, PUT, DELETE")
		writeError(w, http.StatusMethodNotAllowed, "method "+r.Method+" is not allowed on /cache/: use GET, PUT or DELETE")
		return
	}
	if problem := checkCacheName(cache); problem != "" {
		writeError(w, http.StatusBadRequest, "invalid cache name: "+problem)
		return
	}
	key, problem := q.itemKey()
	if problem != "" {
		writeError(w, http.StatusBadRequest, problem)
		return
	}
	var ttl time.Duration
	if r.Method == http.MethodPut {
		if ttl, problem = q.ttl(); problem != "" {
			writeError(w, http.StatusBadRequest, problem)
			return
		}
	}
	if !h.cacheExists(w, cache) || !h.takeOp(w, limitOps) {
		return
	}

	switch r.Method {
	case http.MethodGet:
		value, ok := h.state.store.get(cache, key)
		if !ok {
			writeError(w, http.StatusNotFound, "Key Not Found")
			return
		}
		// One allocation for both header values; capped so that an append
		// to one cannot overwrite the other.
		vals := []string{"application/octet-stream", strconv.Itoa(len(value))}
		hdr := w.Header()
		hdr["Content-Type"] = vals[0:1:1]
		hdr["Content-Length"] = vals[1:2:2]
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(value)
	case http.MethodPut:
		value, status, err := readValue(r, int64(len(key)), h.MaxItemSize)
		if err != nil {
			h.logger.Debug("not storing item", zap.String("cache", cache), zap.Error(err))
			writeError(w, status, err.Error())
			return
		}
		h.state.store.set(cache, key, value, ttl)
		w.WriteHeader(http.StatusNoContent)
	case http.MethodDelete:
		h.state.store.delete(cache, key)
		w.WriteHeader(http.StatusNoContent)
	}
}

// readValue reads a PUT body that, with a key of keyLen bytes, fits in
// maxItemSize. On any failure it returns no value, the status to answer with
// and the reason: a truncated upload must never be stored as if it were the
// whole value.
func readValue(r *http.Request, keyLen, maxItemSize int64) ([]byte, int, error) {
	return readBody(r, maxItemSize-keyLen, func() error {
		return fmt.Errorf("item too large: key plus value exceed max_item_size (%d bytes)", maxItemSize)
	})
}

// readBody reads a request body of at most limit bytes, answering
// tooLarge's error with 413 when it is larger. Like readValue, it returns
// either the whole body or an error.
func readBody(r *http.Request, limit int64, tooLarge func() error) ([]byte, int, error) {
	if limit < 0 || r.ContentLength > limit {
		return nil, http.StatusRequestEntityTooLarge, tooLarge()
	}
	var value []byte
	var err error
	if r.ContentLength >= 0 {
		// The length is known and within bounds: read into a buffer of
		// that size, which then becomes the stored copy. slices.Grow
		// rounds its capacity up to the allocator's size class, so the
		// capacity tells max_memory what the buffer really takes.
		value = slices.Grow([]byte(nil), int(r.ContentLength))[:r.ContentLength]
		_, err = io.ReadFull(r.Body, value)
	} else {
		value, err = io.ReadAll(io.LimitReader(r.Body, limit+1))
		if err == nil && int64(len(value)) > limit {
			return nil, http.StatusRequestEntityTooLarge, tooLarge()
		}
		// Don't keep ReadAll's spare capacity, which max_memory would
		// count; append to nil rounds only up to a size class.
		if cap(value)-len(value) > len(value)/8 {
			value = append([]byte(nil), value...)
		}
	}
	if err != nil {
		// An earlier handler such as request_body may have set a limit.
		var maxBytes *http.MaxBytesError
		if errors.As(err, &maxBytes) {
			return nil, http.StatusRequestEntityTooLarge, err
		}
		return nil, http.StatusBadRequest, fmt.Errorf("reading the request body: %w", err)
	}
	return value, 0, nil
}
