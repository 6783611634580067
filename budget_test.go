package momento

import (
	"net/http"
	"testing"
	"time"
)

// A configured budget: a client sending as fast as it can takes all but
// the reserve, which is kept for the clients that have had less than
// their share.
func TestBudgetKeepsItsReserveForOthers(t *testing.T) {
	b := &budget{kind: budgetOps}
	now := time.Unix(1000, 0)
	greedy := 0
	for greedy < 100 {
		if ok, _, _ := b.take("greedy", 10, now); !ok {
			break
		}
		greedy++
	}
	// 10 a second with a reserve of 2: the first five are its share
	// (10 / (itself + one more)), the next three come from above the
	// reserve.
	if greedy != 8 {
		t.Fatalf("a flooding client got %d of a budget of 10 at once, want 8", greedy)
	}
	ok, wait, limit := b.take("greedy", 10, now)
	if ok || limit != 10 || wait <= 0 || retryAfterSeconds(wait) != 1 {
		t.Fatalf("the flood's next call: ok %v, wait %v, limit %v", ok, wait, limit)
	}
	for i := range 2 {
		if ok, _, _ := b.take("polite", 10, now); !ok {
			t.Fatalf("another client's call %d was refused from the reserve", i)
		}
	}
	if ok, _, _ := b.take("polite", 10, now); ok {
		t.Fatal("a call past the whole budget was let through")
	}
	// A tenth of a second later, one more token: for the polite client
	// only until the reserve is whole again.
	later := now.Add(100 * time.Millisecond)
	if ok, _, _ := b.take("greedy", 10, later); ok {
		t.Fatal("the flood took from the reserve")
	}
	if ok, _, _ := b.take("polite", 10, later); !ok {
		t.Fatal("the polite client was refused a refilled token")
	}
	if st := b.status(10, later); st.PerSecond != 10 || st.Learned || st.Refused != 4 {
		t.Fatalf("status %+v", st)
	}
}

// Without a configured limit, nothing is metered until the region
// refuses; then its rate is the budget, lowered while the region still
// refuses, raised while it does not, and lifted once nobody is refused.
func TestBudgetLearnsTheRegionsRate(t *testing.T) {
	b := &budget{kind: budgetOps}
	now := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	for i := range 500 {
		if ok, _, _ := b.take("a", 0, at(time.Duration(i)*time.Millisecond)); !ok {
			t.Fatal("a region that never refused is metered")
		}
	}
	for i := range 50 {
		b.answered(http.StatusNoContent, 0, at(time.Duration(500+i*9)*time.Millisecond))
	}
	b.answered(http.StatusTooManyRequests, 0, at(950*time.Millisecond))
	if st := b.status(0, at(950*time.Millisecond)); st.PerSecond != 50 || !st.Learned {
		t.Fatalf("after the region took 50 in the last second and refused one: %+v", st)
	}
	// The budget starts empty, as the region's bucket is.
	if ok, _, _ := b.take("b", 0, at(951*time.Millisecond)); ok {
		t.Fatal("a call let through with the region's bucket empty")
	}
	if ok, _, _ := b.take("b", 0, at(980*time.Millisecond)); !ok {
		t.Fatal("a newcomer was refused a refilled token")
	}
	// Refused again within the budget: lowered by a tenth, once per
	// budgetLowerEvery however many calls were on their way.
	b.answered(http.StatusTooManyRequests, 0, at(1100*time.Millisecond))
	b.answered(http.StatusTooManyRequests, 0, at(1150*time.Millisecond))
	if st := b.status(0, at(1150*time.Millisecond)); st.PerSecond != 45 {
		t.Fatalf("after two refusals 50 ms apart: %d a second, want 45", st.PerSecond)
	}
	// The budget keeps refusing the flood, the region refuses nothing: a
	// tenth more each budgetRaiseEvery.
	var refused bool
	for d := 1200 * time.Millisecond; d <= 1150*time.Millisecond+budgetHold; d += 50 * time.Millisecond {
		if ok, _, _ := b.take("a", 0, at(d)); !ok {
			refused = true
		}
		if d == 1150*time.Millisecond+budgetRaiseEvery {
			if st := b.status(0, at(d)); st.PerSecond != 49 {
				t.Fatalf("after budgetRaiseEvery without the region refusing: %+v, want 49 a second", st)
			}
		}
	}
	if st := b.status(0, at(1150*time.Millisecond+budgetHold)); !refused || st.PerSecond != 72 {
		t.Fatalf("after budgetHold without the region refusing: %+v (a refused: %v), want 72 a second", st, refused)
	}
	// Nobody refused for budgetHold: no longer metered.
	if ok, _, _ := b.take("a", 0, at(1150*time.Millisecond+3*budgetHold)); !ok {
		t.Fatal("still metered long after the last refusal")
	}
	if st := b.status(0, at(1150*time.Millisecond+3*budgetHold)); st.PerSecond != 0 || st.Learned {
		t.Fatalf("status %+v, want not metered", st)
	}
}

// A region that refuses at a quiet moment (for another of its limits, say)
// is not taken to allow only what it took then: what it took in the last
// minute without refusing is a rate it has.
func TestBudgetRemembersWhatTheRegionTook(t *testing.T) {
	b := &budget{kind: budgetOps}
	now := time.Unix(1000, 0)
	for i := range 80 {
		b.answered(http.StatusOK, 0, now.Add(time.Duration(i)*10*time.Millisecond))
	}
	for i := range 10 {
		b.answered(http.StatusOK, 0, now.Add(5*time.Second+time.Duration(i)*time.Second))
	}
	b.answered(http.StatusTooManyRequests, 0, now.Add(20*time.Second))
	if st := b.status(0, now.Add(20*time.Second)); st.PerSecond < 80 {
		t.Fatalf("learned %d a second at a quiet moment, after the region took 80 in a second", st.PerSecond)
	}
}
