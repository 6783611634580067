package momento

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// floodBudget runs a budget of limit calls a second for the given time, in
// steps of two milliseconds: each flooding address asks every step, the
// polite one every politeEvery. It returns the polite client's calls let
// through and asked, all calls let through, and the refusals that said
// to retry at once (there should be none: they would get no Retry-After).
// With rotate, one flooding address asks each step, in turn (each asking
// now and then, all of them often).
func floodBudget(b *budget, limit int, flooders []string, rotate bool, polite string, politeEvery, d time.Duration) (politeOK, politeAsked, total, noWait int) {
	start := time.Unix(1000, 0)
	for step := time.Duration(0); step < d; step += 2 * time.Millisecond {
		now := start.Add(step)
		asking := flooders
		if rotate {
			i := int(step/(2*time.Millisecond)) % len(flooders)
			asking = flooders[i : i+1]
		}
		for _, f := range asking {
			ok, wait, _ := b.take(f, limit, now)
			switch {
			case ok:
				total++
			case wait <= 0:
				noWait++
			}
		}
		if (step+politeEvery/2)%politeEvery < 2*time.Millisecond { // not in step with the flood
			politeAsked++
			if ok, _, _ := b.take(polite, limit, now); ok {
				politeOK++
				total++
			}
		}
	}
	return
}

// However many addresses flood a budget, a client asking for less than
// its share (the limit divided among the addresses asking, plus one) gets
// every call, and the flood takes the rest, within the limit.
func TestBudgetServesEachAddressItsShare(t *testing.T) {
	t.Parallel()
	ipv4 := func(n int) (addrs []string) {
		for i := range n {
			addrs = append(addrs, fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		}
		return
	}
	ipv6 := func(n int) (addrs []string) {
		for i := range n {
			addrs = append(addrs, fmt.Sprintf("2001:db8:1:%x::/64", i))
		}
		return
	}
	for _, tc := range []struct {
		name        string
		flooders    []string
		rotate      bool
		polite      string
		politeEvery time.Duration // under its share of 100 a second
		share       float64       // the polite client's, a second
	}{
		{"1 address", ipv4(1), false, "192.0.2.1", 50 * time.Millisecond, 30},       // asks 20 a second
		{"10 addresses", ipv4(10), false, "192.0.2.1", 100 * time.Millisecond, 7.5}, // 10: past it, its share
		{"50 addresses", ipv4(50), false, "192.0.2.1", time.Second, 1.7},
		{"200 addresses", ipv4(200), false, "192.0.2.1", 2 * time.Second, 0.45}, // 0.5: past it, its share
		// An IPv6 host with many /64s in one /48 is one network: the
		// polite client in another /48 shares the budget with it alone,
		// whether its /64s all flood or each asks now and then.
		{"500 IPv6 /64s of one /48", ipv6(500), false, "2001:db8:2::/64", 50 * time.Millisecond, 30},
		{"4000 IPv6 /64s of one /48 in turn", ipv6(4000), true, "2001:db8:2::/64", 50 * time.Millisecond, 30},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const limit, d = 100, 6 * time.Second
			ok, asked, total, noWait := floodBudget(&budget{kind: budgetOps}, limit, tc.flooders, tc.rotate, tc.polite, tc.politeEvery, d)
			if noWait > 0 {
				t.Errorf("%d refusals said to retry at once", noWait)
			}
			if asked < int(d/tc.politeEvery) {
				t.Fatalf("the polite client asked %d times", asked)
			}
			share := tc.share * d.Seconds()
			if want := min(asked, int(share)); ok < want {
				t.Errorf("the polite client got %d of %d calls, its share %.0f", ok, asked, share)
			}
			if most := limit*int(d.Seconds()) + limit; total > most || !tc.rotate && total < most-3*limit {
				t.Errorf("%d calls let through in %v at %d a second", total, d, limit)
			}
		})
	}
}

// A configured budget refuses with a Retry-After of when a call may
// succeed, and counts the refusals.
func TestBudgetRefusesWithRetryAfter(t *testing.T) {
	b := &budget{kind: budgetOps}
	now := time.Unix(1000, 0)
	n := 0
	for n < 100 {
		if ok, _, _ := b.take("greedy", 10, now); !ok {
			break
		}
		n++
	}
	// Its first call from its share, then all but the reserve (2).
	if n != 8 {
		t.Fatalf("a flooding client got %d of a budget of 10 at once, want 8", n)
	}
	ok, wait, limit := b.take("greedy", 10, now)
	if ok || limit != 10 || wait <= 0 || retryAfterSeconds(wait) != 1 {
		t.Fatalf("the flood's next call: ok %v, wait %v, limit %v", ok, wait, limit)
	}
	if ok, _, _ := b.take("polite", 10, now); !ok {
		t.Fatal("a newcomer's first call was refused with the reserve whole")
	}
	if st := b.status(10, now); st.PerSecond != 10 || st.Learned || st.Refused != 2 {
		t.Fatalf("status %+v", st)
	}
}

// Without a configured limit, nothing is metered until the region
// refuses; then what it took in the last second is the budget, lowered
// while the region still refuses, raised (not past just under the rate
// it refused) while it does not, and lifted once nobody is refused.
func TestBudgetLearnsTheRegionsRate(t *testing.T) {
	b := &budget{kind: budgetOps}
	now := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	for i := range 51 {
		if ok, _, _ := b.take("a", 0, at(time.Duration(500+i*9)*time.Millisecond)); !ok {
			t.Fatal("a region that never refused is metered")
		}
	}
	// One 429 is not the region's rate: it may refuse for a cache's own
	// limit, say. Two in a second are.
	b.answered(http.StatusTooManyRequests, 0, at(950*time.Millisecond))
	if st := b.status(0, at(950*time.Millisecond)); st.PerSecond != 0 {
		t.Fatalf("metered after one 429: %+v", st)
	}
	b.answered(http.StatusTooManyRequests, 0, at(955*time.Millisecond))
	b.answered(http.StatusTooManyRequests, 0, at(960*time.Millisecond))
	if st := b.status(0, at(960*time.Millisecond)); st.PerSecond != 49 || !st.Learned {
		t.Fatalf("after the region took 49 of 51 calls in the last second: %+v", st)
	}
	// The budget starts empty, as the region's bucket is.
	if ok, _, _ := b.take("b", 0, at(961*time.Millisecond)); ok {
		t.Fatal("a call let through with the region's bucket empty")
	}
	if ok, _, _ := b.take("b", 0, at(990*time.Millisecond)); !ok {
		t.Fatal("a newcomer was refused a refilled token")
	}
	// Refused again within the budget: lowered by a tenth, once per
	// budgetLowerEvery however many calls were on their way.
	b.answered(http.StatusTooManyRequests, 0, at(1100*time.Millisecond))
	b.answered(http.StatusTooManyRequests, 0, at(1150*time.Millisecond))
	if st := b.status(0, at(1150*time.Millisecond)); st.PerSecond != 44 {
		t.Fatalf("after two refusals 50 ms apart: %d a second, want 44", st.PerSecond)
	}
	// The budget keeps refusing the flood, the region refuses nothing: a
	// tenth more after budgetRaiseEvery, and no more than just under the
	// 48 the region took when it last refused.
	var refused bool
	for d := 1200 * time.Millisecond; d <= 1150*time.Millisecond+budgetHold; d += 50 * time.Millisecond {
		if ok, _, _ := b.take("a", 0, at(d)); !ok {
			refused = true
		}
		if d == 1150*time.Millisecond+budgetRaiseEvery {
			if st := b.status(0, at(d)); st.PerSecond != 45 {
				t.Fatalf("after budgetRaiseEvery without the region refusing: %+v, want 45 a second", st)
			}
		}
	}
	if st := b.status(0, at(1150*time.Millisecond+budgetHold)); !refused || st.PerSecond != 45 {
		t.Fatalf("after budgetHold without the region refusing: %+v (a refused: %v), want 45 a second", st, refused)
	}
	// Nobody refused for budgetHold: no longer metered.
	if ok, _, _ := b.take("a", 0, at(1150*time.Millisecond+3*budgetHold)); !ok {
		t.Fatal("still metered long after the last refusal")
	}
	if st := b.status(0, at(1150*time.Millisecond+3*budgetHold)); st.PerSecond != 0 || st.Learned {
		t.Fatalf("status %+v, want not metered", st)
	}
}

// A region that refuses a call now and then, while it takes all the
// others, is not at its rate: nobody is metered, however long it goes on
// (a client's oversized items, or a cache of its own with a lower limit,
// would otherwise hold every client's rate down).
func TestBudgetIgnoresA429NowAndThen(t *testing.T) {
	b := &budget{kind: budgetOps}
	now := time.Unix(1000, 0)
	for ms := range 60_000 {
		at := now.Add(time.Duration(ms) * time.Millisecond)
		if ms%33 == 0 { // 30 calls a second
			if ok, _, _ := b.take(fmt.Sprintf("10.0.0.%d", ms%30), 0, at); !ok {
				t.Fatalf("a call refused at %v", at.Sub(now))
			}
		}
		if ms%1900 == 0 {
			b.answered(http.StatusTooManyRequests, 0, at)
		}
	}
	if st := b.status(0, now.Add(time.Minute)); st.PerSecond != 0 || st.Refused != 0 {
		t.Fatalf("status %+v", st)
	}
}
