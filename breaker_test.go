package momento

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"
)

// These tests run the breaker on testing/synctest's fake clock: gobreaker
// reads time.Now, which the bubble controls, so a 30 s open period passes
// in no real time.

func testBreaker(cfg BreakerConfig) *breaker {
	return newBreaker("r", (&cfg).withDefaults(), zap.NewNop())
}

// fail reports n region failures through admitted requests.
func fail(t *testing.T, b *breaker, n int) {
	t.Helper()
	for range n {
		done, _, ok := b.allow()
		if !ok {
			t.Fatal("refused while failures were still being counted")
		}
		done(errUpstreamFailure)
	}
}

func TestBreakerOpensAfterConsecutiveFailuresAndSaysWhenToRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 3})
		fail(t, b, 2)
		done, _, _ := b.allow()
		done(nil) // a success in between resets the run
		fail(t, b, 2)
		if b.state() != gobreaker.StateClosed {
			t.Fatalf("opened after 2 failures in a row: %v", b.state())
		}
		fail(t, b, 1)
		if b.state() != gobreaker.StateOpen {
			t.Fatalf("state %v after 3 failures in a row", b.state())
		}
		_, wait, ok := b.allow()
		if ok || wait != defaultOpenFor {
			t.Fatalf("open breaker: ok %v, retry after %v; want refused, %v", ok, wait, defaultOpenFor)
		}
		time.Sleep(10 * time.Second)
		if _, wait, _ := b.allow(); retryAfterSeconds(wait) != 20 {
			t.Fatalf("10 s later: retry after %v, want 20 s", wait)
		}
	})
}

func TestBreakerHalfOpenProbesThenCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 1, OpenFor: 30e9, HalfOpenRequests: 2})
		fail(t, b, 1)
		time.Sleep(30*time.Second + time.Nanosecond) // gobreaker half-opens once open_for has passed
		if b.state() != gobreaker.StateHalfOpen {
			t.Fatalf("after open_for: %v", b.state())
		}
		probe1, _, ok1 := b.allow()
		probe2, _, ok2 := b.allow()
		_, wait, ok3 := b.allow()
		if !ok1 || !ok2 || ok3 {
			t.Fatalf("half-open admitted %v %v %v; want exactly the 2 probes", ok1, ok2, ok3)
		}
		if wait != time.Second {
			t.Fatalf("while probes are in flight, retry after %v; want 1s", wait)
		}
		probe1(nil)
		probe2(nil)
		if b.state() != gobreaker.StateClosed {
			t.Fatalf("after 2 successful probes: %v", b.state())
		}
	})
}

func TestBreakerHalfOpenFailureReopens(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 1, OpenFor: 30e9})
		fail(t, b, 1)
		time.Sleep(30*time.Second + time.Nanosecond) // gobreaker half-opens once open_for has passed
		fail(t, b, 1)                                // the probe fails
		if _, wait, ok := b.allow(); ok || wait != 30*time.Second {
			t.Fatalf("after a failed probe: ok %v, retry after %v; want open again for 30s", ok, wait)
		}
	})
}

func TestBreakerFailureRatio(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 100, FailureRatio: 0.5, MinRequests: 4})
		for i := range 3 {
			done, _, _ := b.allow()
			done([]error{nil, errUpstreamFailure}[i%2])
		}
		if b.state() != gobreaker.StateClosed {
			t.Fatal("opened before min_requests")
		}
		fail(t, b, 1) // 2 failures in 4 requests
		if b.state() != gobreaker.StateOpen {
			t.Fatalf("state %v at a failure ratio of 0.5", b.state())
		}
	})
}

// Excluded outcomes do not dilute failure_ratio either: clients that
// abort their uploads cannot keep a failing region's breaker closed. (30
// aborted uploads did, in a hostile review: 10 failures in 40 requests.)
func TestBreakerFailureRatioIgnoresExcludedOutcomes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 1000, FailureRatio: 0.5, MinRequests: 10})
		for range 30 {
			done, _, _ := b.allow()
			done(errExcluded)
		}
		for i := range 10 {
			done, _, _ := b.allow()
			done(errUpstreamFailure)
			if open := b.state() == gobreaker.StateOpen; open != (i == 9) {
				t.Fatalf("after %d failures (and 30 excluded outcomes): open %v, want it open at min_requests", i+1, open)
			}
		}
	})
}

// Only the region's own failures count: an excluded outcome (the client
// left, the value was too large) is neither a success nor a failure.
func TestBreakerExcludedOutcomesCountAsNeither(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 1})
		for range 10 {
			done, _, _ := b.allow()
			done(errExcluded)
		}
		b.record(errExcluded)
		if c := b.counts(); c.TotalFailures != 0 || c.TotalSuccesses != 0 || b.state() != gobreaker.StateClosed {
			t.Fatalf("counts %+v, state %v", c, b.state())
		}
	})
}

// A long poll never holds a half-open probe slot: it is admitted unless the
// breaker is open, and reports its outcome when known.
func TestBreakerLongPollsTakeNoProbeSlot(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 1, OpenFor: 30e9})
		fail(t, b, 1)
		if _, ok := b.admitLongPoll(); ok {
			t.Fatal("a long poll was admitted while open")
		}
		time.Sleep(30*time.Second + time.Nanosecond) // gobreaker half-opens once open_for has passed
		for range 5 {
			if _, ok := b.admitLongPoll(); !ok {
				t.Fatal("a long poll was refused while half-open")
			}
		}
		if _, _, ok := b.allow(); !ok {
			t.Fatal("long polls took the half-open probe slot")
		}
	})
}

// A settings change keeps an open breaker open; a reset closes it.
func TestBreakerConfigureKeepsOpenAndResetCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := testBreaker(BreakerConfig{Failures: 1})
		fail(t, b, 1)
		b.configure((&BreakerConfig{Failures: 2, OpenFor: 60e9}).withDefaults())
		if b.state() != gobreaker.StateOpen {
			t.Fatalf("a new open_for closed the breaker: %v", b.state())
		}
		if from := b.reset(); from != gobreaker.StateOpen || b.state() != gobreaker.StateClosed {
			t.Fatalf("reset from %v left %v", from, b.state())
		}
		fail(t, b, 1)
		if b.state() != gobreaker.StateClosed {
			t.Fatal("the new failures threshold (2) was not applied")
		}
		fail(t, b, 1)
		if _, wait, ok := b.allow(); ok || wait != 60*time.Second {
			t.Fatalf("ok %v, retry after %v; want open for the new 60s", ok, wait)
		}
	})
}

func TestRetryAfterSecondsRoundsUp(t *testing.T) {
	for d, want := range map[time.Duration]int64{time.Second: 1, 1500 * time.Millisecond: 2, 30 * time.Second: 30, time.Nanosecond: 1} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}
