package momento

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// This file meters a region's calls a second (cache operations, publishes)
// against its account's limit, and shares them among client addresses.
//
// Momento limits each region's cache operations and publishes a second
// (100 and 10 on a default account) and answers 429 past them. Sent first
// come, first served, those calls go to whoever sends most: one client
// looping over writes would take them from every other. So each region
// meters its calls against a budget a second: the limit configured
// (max_ops_per_second, max_publishes_per_second), or without one, a rate
// learned from its 429s: the most it took in a second within the last
// minute when it first refused, then following it (see budgetHold). With
// neither, nothing is metered: a region that never refuses is never held
// back.
//
// The budget is a token bucket refilled at the limit a second and holding
// a second's worth. All of it but a reserve (a fifth) goes to whoever asks
// first; the reserve only to a client that has had less than its share in
// the last second: the limit divided among the addresses calling, plus one
// more that may come. So a client sending as fast as it can takes what the
// others leave, and a client sending little still gets through.

// How a learned limit follows the region. It is kept until budgetHold
// after the region last refused a call or the budget last refused a
// client. It falls by a tenth when the region refuses a call the budget
// let through, at most once each budgetLowerEvery (calls already on their
// way when it refused one are refused too, and say nothing new), and
// rises by a tenth each budgetRaiseEvery without such a refusal, so that
// a limit learned too low (the region refused for another reason, or the
// account's limit was raised) does not hold clients back for long.
const (
	budgetHold        = 10 * time.Second
	budgetLowerEvery  = 100 * time.Millisecond
	budgetRaiseEvery  = 2 * time.Second
	budgetPeakSeconds = 60 // see peak
)

// budget meters one kind of a region's calls. It lives in the region's
// state, across reloads.
type budget struct {
	kind string // what it counts, for messages: "cache operations", "publishes"

	mu sync.Mutex
	// learned is the limit learned from the region's 429s (0: none), kept
	// while held is in the future.
	learned float64
	held    time.Time
	raised  time.Time // when learned last rose, or was learned
	lowered time.Time // when learned last fell, or was learned
	// lastRefused is when the region last answered 429.
	lastRefused time.Time

	// The bucket, at the rate in force when it was last refilled.
	rate   float64
	tokens float64
	at     time.Time

	// Calls let through per client address, in the current second and the
	// one before.
	second           int64
	sent, sentBefore map[string]int
	// The region's answers other than 429 in each tenth of the last second
	// (ending with the tenth numbered tenth).
	accepted [10]int
	tenth    int64
	// peak is the most the region took in a second (as accepted counts
	// it, at the end of each tenth) within the last budgetPeakSeconds:
	// what it took without refusing is a limit it has, whatever the
	// moment it refused.
	peak   int
	peakAt time.Time

	refused int64 // clients refused by the budget, for the admin API
}

// refusal is the answer to a client the budget refused, at limit calls a
// second.
func (b *budget) refusal(rg *region, configured int, limit float64, wait time.Duration) *refusal {
	why := fmt.Sprintf("its max_%s_per_second (%d %s a second)", b.setting(), configured, b.kind)
	if configured == 0 {
		why = fmt.Sprintf("its account's limit (about %d %s a second, learned from its 429s)", int(limit), b.kind)
	}
	return &refusal{status: http.StatusTooManyRequests, retryAfter: wait, msg: fmt.Sprintf(
		"region %s is at %s, shared among the clients calling it, and this client has had its share; retry in %d s",
		rg.name, why, retryAfterSeconds(wait))}
}

func (b *budget) setting() string {
	if b.kind == budgetPublishes {
		return "publishes"
	}
	return "ops"
}

// The kinds of calls a region meters.
const (
	budgetOps       = "cache operations"
	budgetPublishes = "publishes"
)

// budget is the region's budget for calls of op, with its configured
// limit (0: learned); nil for subscribes, which max_subscriptions bounds.
func (rg *region) budget(o op) (*budget, int) {
	switch o {
	case opGet, opSet, opDelete:
		return &rg.state.ops, rg.maxOpsPerSecond
	case opPublish:
		return &rg.state.publishes, rg.maxPublishesPerSecond
	}
	return nil, 0
}

// roll moves the counts on to now. Callers hold b.mu.
func (b *budget) roll(now time.Time) {
	if s := now.Unix(); s != b.second {
		b.sentBefore = nil
		if s == b.second+1 {
			b.sentBefore = b.sent
		}
		b.sent, b.second = nil, s
	}
	tenth := now.UnixNano() / int64(100*time.Millisecond)
	if tenth == b.tenth {
		return
	}
	// A tenth has ended: the last second's count is as high as it gets.
	if taken := b.lastSecond(); taken >= b.peak || now.Sub(b.peakAt) > budgetPeakSeconds*time.Second {
		b.peak, b.peakAt = taken, now
	}
	if tenth-b.tenth >= int64(len(b.accepted)) {
		b.accepted, b.tenth = [10]int{}, tenth
	}
	for ; b.tenth < tenth; b.tenth++ {
		b.accepted[(b.tenth+1)%10] = 0
	}
}

// lastSecond is what the region took in the last second. Callers hold
// b.mu.
func (b *budget) lastSecond() int {
	taken := 0
	for _, n := range b.accepted {
		taken += n
	}
	return taken
}

// sentLastSecond estimates the calls of client let through in the last
// second, weighing the second before by how much of it that is. Callers
// hold b.mu.
func (b *budget) sentLastSecond(client string, now time.Time) float64 {
	past := float64(now.Nanosecond()) / 1e9
	return float64(b.sent[client]) + float64(b.sentBefore[client])*(1-past)
}

// limit is the rate in force: configured, learned, or 0 for none. Callers
// hold b.mu.
func (b *budget) limit(configured int, now time.Time) float64 {
	if configured > 0 {
		return float64(configured)
	}
	if b.learned == 0 {
		return 0
	}
	if now.After(b.held) {
		b.learned = 0
		return 0
	}
	if now.Sub(b.raised) >= budgetRaiseEvery && now.Sub(b.lastRefused) >= budgetRaiseEvery {
		b.learned *= 1.1
		b.raised = now
	}
	return b.learned
}

// take lets one call of client through, or says how long until it may
// ask again, at limit calls a second.
func (b *budget) take(client string, configured int, now time.Time) (ok bool, wait time.Duration, limit float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	limit = b.limit(configured, now)
	if limit == 0 {
		// Counted all the same: when the region begins to refuse, the
		// clients that sent most have had their share already.
		b.rate = 0
		b.count(client)
		return true, 0, 0
	}
	if b.rate == 0 {
		// A configured limit starts with a full second. (A learned one
		// starts empty: answered set the rate.)
		b.tokens, b.at = limit, now
	}
	b.tokens = min(limit, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	b.rate, b.at = limit, now
	reserve := max(1, limit/5)
	need := 1.0
	if b.tokens-1 < reserve {
		others := max(len(b.sent), len(b.sentBefore))
		if b.sent[client] > 0 || b.sentBefore[client] > 0 {
			others--
		}
		if b.sentLastSecond(client, now) >= limit/float64(others+2) {
			need = reserve + 1 // past its share: only what is above the reserve
		}
	}
	if b.tokens < need {
		b.refused++
		if configured == 0 {
			b.held = now.Add(budgetHold)
		}
		return false, time.Duration((need - b.tokens) / limit * float64(time.Second)), limit
	}
	b.tokens--
	b.count(client)
	return true, 0, limit
}

// count records a call of client let through. Callers hold b.mu.
func (b *budget) count(client string) {
	if b.sent == nil {
		b.sent = map[string]int{}
	}
	b.sent[client]++
}

// answered records the region's answer to a call the budget let through:
// a 429 teaches it the region's limit (unless one is configured), anything
// else counts as taken.
func (b *budget) answered(status int, configured int, now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	if status != http.StatusTooManyRequests {
		b.accepted[b.tenth%10]++
		return
	}
	b.lastRefused = now
	if configured > 0 {
		return // another client of the account, or another gateway: passed on as it is
	}
	switch {
	case b.learned == 0 || now.After(b.held):
		b.learned, b.raised, b.lowered = float64(max(1, b.lastSecond(), b.peak)), now, now
	case now.Sub(b.lowered) >= budgetLowerEvery:
		// Refused within the budget: it is above the region's rate (what
		// the region took in a second included its burst), or the account
		// is busier.
		b.learned, b.raised, b.lowered = max(1, b.learned*0.9), now, now
	}
	b.held = now.Add(budgetHold)
	// The region's own bucket is empty now: so is the budget's, so that
	// the two run in step.
	b.rate, b.tokens, b.at = b.learned, 0, now
}

// status is the budget as the admin API shows it.
func (b *budget) status(configured int, now time.Time) BudgetStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := BudgetStatus{Refused: b.refused}
	switch limit := b.limit(configured, now); {
	case configured > 0:
		st.PerSecond = configured
	case limit > 0:
		st.PerSecond, st.Learned = int(limit), true
	}
	return st
}

// BudgetStatus is one of a region's budgets as GET /momento/regions shows
// it.
type BudgetStatus struct {
	// The calls a second the gateway lets through (0: not metered now).
	PerSecond int `json:"per_second"`
	// Whether that rate was learned from the region's 429s, rather than
	// configured.
	Learned bool `json:"learned,omitempty"`
	// Clients refused by the budget since the process started.
	Refused int64 `json:"refused"`
}
