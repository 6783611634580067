package main

// The raw long-poll client's reading of answers, lean so that 10,000
// subscribers leave the shared cores to the gateway: the status line and
// headers are scanned for what the tool needs, and an answer's items are
// picked out of the gateway's JSON without reflection. Anything else (no
// Content-Length, JSON it does not recognise) falls back to net/http's
// parser and encoding/json, so the tool never miscounts.

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strconv"
)

// readAnswer reads one HTTP/1.1 answer from br: its status, its body (in
// buf's space) and whether the server will close the connection.
func readAnswer(br *bufio.Reader, buf []byte) (status int, body []byte, closing bool, err error) {
	var head []byte // the status line and headers, kept for the fallback
	length := -1
	for first := true; ; first = false {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return 0, nil, false, err
		}
		head = append(head, line...)
		line = bytes.TrimRight(line, "\r\n")
		switch {
		case first:
			if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.1 ")) {
				return fallback(head, br)
			}
			status, err = strconv.Atoi(string(line[9:12]))
			if err != nil {
				return fallback(head, br)
			}
		case len(line) == 0:
			if length < 0 {
				return fallback(head, br)
			}
			if cap(buf) < length {
				buf = make([]byte, length)
			}
			body = buf[:length]
			_, err := io.ReadFull(br, body)
			return status, body, closing, err
		default:
			name, value, ok := bytes.Cut(line, []byte(":"))
			if !ok {
				return fallback(head, br)
			}
			value = bytes.TrimSpace(value)
			switch {
			case bytes.EqualFold(name, []byte("Content-Length")):
				if length, err = strconv.Atoi(string(value)); err != nil {
					return fallback(head, br)
				}
			case bytes.EqualFold(name, []byte("Transfer-Encoding")):
				return fallback(head, br)
			case bytes.EqualFold(name, []byte("Connection")) && bytes.EqualFold(value, []byte("close")):
				closing = true
			}
		}
	}
}

// fallback reads with net/http the answer whose head was read so far
// (all of it, or up to a line it did not recognise).
func fallback(head []byte, br *bufio.Reader) (status int, body []byte, closing bool, err error) {
	resp, err := http.ReadResponse(bufio.NewReader(io.MultiReader(bytes.NewReader(head), br)), nil)
	if err != nil {
		return 0, nil, false, err
	}
	body, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, body, true, err // the bufio above may hold bytes of the next answer: start over
}

// applyFast reads a subscribe answer as the gateway writes it, items one
// after another; false if it is not in that form (apply then reads it).
func (c *pollCursor) applyFast(body []byte, got func(string)) bool {
	rest, ok := bytes.CutPrefix(body, []byte(`{"items":[`))
	if !ok {
		return false
	}
	type found struct {
		item      bool
		seq, page uint64
		text      string
	}
	var items []found
	for len(rest) > 0 && rest[0] != ']' {
		var f found
		var obj []byte
		switch {
		case bytes.HasPrefix(rest, []byte(`{"item":`)):
			f.item = true
		case bytes.HasPrefix(rest, []byte(`{"discontinuity":`)):
		default:
			return false
		}
		end := objectEnd(rest)
		if end < 0 {
			return false
		}
		obj, rest = rest[:end], rest[end:]
		if len(rest) > 0 && rest[0] == ',' {
			rest = rest[1:]
		}
		if f.item {
			seq, ok1 := number(obj, `"topic_sequence_number":`)
			page, ok2 := number(obj, `"sequence_page":`)
			text, ok3 := str(obj, `"text":"`)
			if !ok1 || !ok2 || !ok3 {
				return false
			}
			f.seq, f.page, f.text = seq, page, text
		} else {
			seq, ok1 := number(obj, `"new_topic_sequence":`)
			page, ok2 := number(obj, `"new_sequence_page":`)
			if !ok1 || !ok2 {
				return false
			}
			f.seq, f.page = seq, page
		}
		items = append(items, f)
	}
	if !bytes.Equal(rest, []byte("]}")) {
		return false
	}
	for _, f := range items {
		if f.item {
			got(f.text)
			c.received++
			c.seq, c.page = f.seq+1, f.page
		} else {
			c.seq, c.page = f.seq, f.page
		}
	}
	return true
}

// objectEnd is the length of the JSON object b starts with, or -1.
func objectEnd(b []byte) int {
	depth, inString := 0, false
	for i := 0; i < len(b); i++ {
		switch ch := b[i]; {
		case inString && ch == '\\':
			i++
		case ch == '"':
			inString = !inString
		case inString:
		case ch == '{':
			depth++
		case ch == '}':
			if depth--; depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}

// number is the unsigned integer after key in obj.
func number(obj []byte, key string) (uint64, bool) {
	i := bytes.Index(obj, []byte(key))
	if i < 0 {
		return 0, false
	}
	digits := obj[i+len(key):]
	n := 0
	for n < len(digits) && digits[n] >= '0' && digits[n] <= '9' {
		n++
	}
	v, err := strconv.ParseUint(string(digits[:n]), 10, 64)
	return v, err == nil
}

// str is the string after key (which ends with its opening quote) in obj,
// if it has no escapes (the tool's messages have none).
func str(obj []byte, key string) (string, bool) {
	i := bytes.Index(obj, []byte(key))
	if i < 0 {
		return "", false
	}
	s := obj[i+len(key):]
	j := bytes.IndexByte(s, '"')
	if j < 0 || bytes.IndexByte(s[:j], '\\') >= 0 {
		return "", false
	}
	return string(s[:j]), true
}
