package main

import (
	"bufio"
	"strconv"
	"strings"
	"testing"
)

// The raw client's lean reading gives what net/http and encoding/json
// give, and falls back to them for answers not in the gateway's form.
func TestRawClientReadsAnswersLikeNetHTTP(t *testing.T) {
	const items = `{"items":[{"discontinuity":{"last_topic_sequence":3,"new_topic_sequence":7,"new_sequence_page":2}},` +
		`{"item":{"topic_sequence_number":7,"sequence_page":2,"value":{"text":"7"}}},` +
		`{"item":{"value":{"text":"x{}"},"sequence_page":2,"topic_sequence_number":8}}]}`
	answers := []struct {
		name, raw string
		status    int
		body      string
		closing   bool
	}{
		{"items", "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: " + strconv.Itoa(len(items)) + "\r\n\r\n" + items, 200, items, false},
		{"refusal, closing", "HTTP/1.1 429 Too Many Requests\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbusy", 429, "busy", true},
		{"chunked: net/http reads it", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n", 200, "abcd", true},
	}
	for _, a := range answers {
		status, body, closing, err := readAnswer(bufio.NewReader(strings.NewReader(a.raw)), nil)
		if err != nil || status != a.status || string(body) != a.body || closing != a.closing {
			t.Errorf("%s: got %d %q closing=%v err=%v, want %d %q closing=%v", a.name, status, body, closing, err, a.status, a.body, a.closing)
		}
	}

	var fast, slow pollCursor
	var gotFast, gotSlow []string
	if !fast.applyFast([]byte(items), func(s string) { gotFast = append(gotFast, s) }) {
		t.Fatal("the gateway's answer was not read by the fast path")
	}
	slow.apply([]byte(items), func(s string) { gotSlow = append(gotSlow, s) })
	if fast != slow || strings.Join(gotFast, ",") != strings.Join(gotSlow, ",") || len(gotFast) != 2 {
		t.Errorf("fast path: %+v %q; encoding/json: %+v %q", fast, gotFast, slow, gotSlow)
	}
	if (&pollCursor{}).applyFast([]byte(`{"items":[{"item":{"value":{"text":"a\"b"}}}]}`), func(string) {}) {
		t.Error("the fast path took an escaped string it cannot read")
	}
}
