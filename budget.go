package momento

import (
	"fmt"
	"net/http"
	"net/netip"
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
// learned from its 429s: what it took in the last second when it began to
// refuse, then following it (see budgetHold). With neither, nothing is
// metered: a region that never refuses is never held back.
//
// The budget is a token bucket refilled at the limit a second and holding
// a second's worth. Each network asking (see budgetGroup) has a share of
// it: nine tenths of the limit divided among the networks that asked in
// the last second, plus one more that may come. A network's share accrues
// as credit (up to a second's share, and at least one call), which its
// addresses draw on, first come, first served. A call paid with credit
// may take any token but the reserve (a fifth of the bucket), which only
// an address asking for little more than its share may take. A call
// without credit may take only the tokens that no asking network's credit
// is owed, and the reserve besides, first come, first served. So a client
// asking within its network's share is served, however many others flood,
// and what the others leave goes to whoever asks. An attacker with many
// IPv4 addresses (or IPv6 /48s) gets a share for each, and past
// maxBudgetClients networks, a new one gets only what is left.

// How a learned limit follows the region. Only a region refusing at least
// budgetEvidence calls in the last second is taken to be at its rate (a
// 429 now and then is for something else: a cache's own limit, an item's
// throughput). The limit is kept until budgetHold after the region last
// refused or the budget last refused a client. It falls by a tenth when
// the region refuses while the budget sends near it, at most once each
// budgetLowerEvery (calls already on their way when it refused one are
// refused too, and say nothing new). It rises by a tenth each
// budgetRaiseEvery without such a refusal, so that a limit learned too
// low (the account's limit was raised, say) does not hold clients back
// for long; within budgetCeilingFor of a refusal, it rises no higher than
// just under what the region took then.
const (
	budgetHold       = 10 * time.Second
	budgetLowerEvery = 100 * time.Millisecond
	budgetRaiseEvery = 2 * time.Second
	budgetCeilingFor = time.Minute
	budgetEvidence   = 2
)

// maxBudgetClients bounds the addresses a budget keeps (for their demand)
// and the networks (for their credit). Past it, a new one takes only what
// no share is owed, until those that stopped asking are forgotten,
// budgetForget after they last asked. A network is remembered that long
// so that one asking now and then keeps the credit it has earned; it
// counts in the shares only while it asks (within the last second).
//
// One network keeps at most maxBudgetGroupClients addresses: it takes one
// share however many it has, and must not fill the table for the others.
const (
	maxBudgetClients      = 4096
	maxBudgetGroupClients = 256
	budgetForget          = 10 * time.Second
)

// budgetOwedEvery spaces the sums of the credit owed to all networks
// (between them, a credit spent is taken off, and what accrues is not
// counted: a hundredth of a second of the limit at most).
const budgetOwedEvery = 10 * time.Millisecond

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
	// lastRefused is when the region last answered 429, and ceiling the
	// rate the budget let through then (0: it was not metering).
	lastRefused time.Time
	ceiling     float64

	// The bucket, at the rate in force when it was last refilled. Written
	// here rather than with x/time/rate (as max_ops_per_client is): the
	// budget reads how full it is (the reserve, what is owed), and empties
	// it when the region refuses.
	rate   float64
	tokens float64
	at     time.Time

	// clients are the addresses that asked within budgetForget, while
	// metered, with their demand.
	clients map[string]*budgetClient
	swept   int64 // the unix second clients was last swept
	// groups counts the clients of each network (see budgetGroup) that
	// asked within a second of the last sweep, and those new since; ledgers
	// are the networks' credit.
	groups  map[string]int
	ledgers map[string]*budgetLedger
	// owed is the credit of the networks asking, as of owedAt, less what
	// was spent since.
	owed   float64
	owedAt time.Time

	// The calls sent to the region, less those it refused, in each tenth
	// of the last second (ending with the tenth numbered tenth). A call
	// counts when it is sent: an upload abandoned on the way has taken
	// one of the region's operations all the same.
	taken [10]int
	tenth int64
	// refusedBy counts the region's 429s likewise.
	refusedBy [10]int

	refused int64 // clients refused by the budget, for the admin API
}

// budgetClient is one address asking of a budget: its network, and how
// much it asks (see light in take).
type budgetClient struct {
	group string    // its network (see budgetGroup)
	seen  time.Time // when it last asked
	// asked counts its requests, let through or not, in the unix second
	// second, and askedBefore in the one before.
	second             int64
	asked, askedBefore int
}

// budgetLedger is one network's share of a budget: the credit its
// addresses draw on.
type budgetLedger struct {
	credit float64   // calls its addresses may make from its share, as of at
	at     time.Time // when credit was last brought up to date
	seen   time.Time // when one of its addresses last asked
}

// demand estimates the requests of c in the last second, let through or
// not.
func (c *budgetClient) demand(now time.Time) float64 {
	if s := now.Unix(); s != c.second {
		c.askedBefore = 0
		if s == c.second+1 {
			c.askedBefore = c.asked
		}
		c.asked, c.second = 0, s
	}
	c.asked++
	return float64(c.asked) + float64(c.askedBefore)*(1-float64(now.Nanosecond())/1e9)
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

// roll moves the counts on to now, and forgets the addresses that have
// not asked for a second. Callers hold b.mu.
func (b *budget) roll(now time.Time) {
	if s := now.Unix(); s != b.swept {
		b.swept = s
		clear(b.groups)
		for addr, c := range b.clients {
			switch idle := now.Sub(c.seen); {
			case idle > budgetForget:
				delete(b.clients, addr)
			case idle <= time.Second:
				b.groups[c.group]++
			}
		}
		for g, l := range b.ledgers {
			if now.Sub(l.seen) > budgetForget {
				delete(b.ledgers, g)
			}
		}
		b.owedAt = time.Time{} // summed again on the next call

	}
	tenth := now.UnixNano() / int64(100*time.Millisecond)
	if tenth == b.tenth {
		return
	}
	if tenth-b.tenth >= int64(len(b.taken)) {
		b.taken, b.refusedBy, b.tenth = [10]int{}, [10]int{}, tenth
	}
	for ; b.tenth < tenth; b.tenth++ {
		b.taken[(b.tenth+1)%10] = 0
		b.refusedBy[(b.tenth+1)%10] = 0
	}
}

// lastSecond is what the region took in the last second. Callers hold
// b.mu.
func (b *budget) lastSecond() int {
	taken := 0
	for _, n := range b.taken {
		taken += n
	}
	return taken
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
		raised := b.learned * 1.1
		if b.ceiling > 0 && now.Sub(b.lastRefused) < budgetCeilingFor {
			raised = min(raised, max(b.learned, b.ceiling*0.95))
		}
		b.learned, b.raised = raised, now
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
		b.rate = 0
		b.taken[b.tenth%10]++
		return true, 0, 0
	}
	if b.rate == 0 {
		// A configured limit starts with a full second. (A learned one
		// starts empty: answered set the rate.)
		b.tokens, b.at = limit, now
	}
	b.tokens = min(limit, b.tokens+now.Sub(b.at).Seconds()*b.rate)
	b.rate, b.at = limit, now

	if b.clients == nil {
		b.clients, b.groups, b.ledgers = map[string]*budgetClient{}, map[string]int{}, map[string]*budgetLedger{}
	}
	c := b.clients[client]
	group := budgetGroup(client)
	if c != nil {
		group = c.group
	} else if len(b.clients) < maxBudgetClients && b.groups[group] < maxBudgetGroupClients {
		c = &budgetClient{group: group, seen: now}
		b.clients[client] = c
		b.groups[group]++
	}
	l := b.ledgers[group]
	if l == nil && len(b.ledgers) < maxBudgetClients {
		// A newcomer network may make its first call at once.
		l = &budgetLedger{credit: 1, at: now}
		b.ledgers[group] = l
		b.groups[group] = max(1, b.groups[group])
		b.owed++
	}
	// Nine tenths shared out (so that credit is not spent as fast as the
	// bucket fills, and a client with credit finds a token) among the
	// networks asking, and one more that may come.
	share := 0.9 * limit / float64(len(b.groups)+1)
	burst := max(1, share)
	credit, light := 0.0, false
	if l != nil {
		l.seen = now
		l.credit = min(burst, l.credit+now.Sub(l.at).Seconds()*share)
		l.at = now
		credit = l.credit
	}
	if c != nil {
		c.seen = now
		light = c.demand(now) <= 2*burst
	}
	if now.Sub(b.owedAt) >= budgetOwedEvery {
		// Owed to the networks asking: one that asks now and then finds
		// its token in the reserve.
		b.owed, b.owedAt = 0, now
		for _, o := range b.ledgers {
			if now.Sub(o.seen) <= time.Second {
				b.owed += min(burst, o.credit+now.Sub(o.at).Seconds()*share)
			}
		}
	}
	reserve := max(1, limit/5)
	switch {
	case credit >= 1 && b.tokens >= 1 && (light || b.tokens-1 >= reserve):
		// Its share: from the reserve too, if it asks for little more
		// than its share (a client that keeps asking when refused, as a
		// flood does, would otherwise win every token the moment it
		// comes, and the reserve is for the others).
		l.credit--
		b.owed--
	case b.tokens-1 >= reserve+b.owed:
	default:
		b.refused++
		if configured == 0 {
			b.held = now.Add(budgetHold)
		}
		// The sooner of: its credit and a token, or a token above the
		// reserve.
		floor := 1.0 // the tokens its credit may reach down to
		if !light {
			floor = reserve + 1
		}
		withCredit := max((1-credit)/share, (floor-b.tokens)/limit)
		withoutCredit := (reserve + b.owed + 1 - b.tokens) / limit
		// Never less than a call's worth: a client told to retry at once
		// would get no Retry-After.
		wait := max(min(withCredit, withoutCredit), 1/limit)
		return false, time.Duration(wait * float64(time.Second)), limit
	}
	b.tokens--
	b.taken[b.tenth%10]++
	return true, 0, limit
}

// budgetGroup is the network an address shares its share with: an IPv6
// client (a /64, see clientAddress) shares its /48, one site's allocation,
// so that a host with many /64s takes one share, whether they flood or
// each asks now and then; an IPv4 address is its own.
func budgetGroup(client string) string {
	if p, err := netip.ParsePrefix(client); err == nil && p.Addr().Is6() {
		if g, err := p.Addr().Prefix(48); err == nil {
			return g.String()
		}
	}
	return client
}

// answered records the region's answer to a call the budget let through:
// its 429s teach the budget the region's rate (unless one is configured).
func (b *budget) answered(status int, configured int, now time.Time) {
	switch status {
	case http.StatusTooManyRequests:
	case http.StatusBadRequest, http.StatusUnauthorized, http.StatusForbidden:
		// Refused for what it asked: not an operation the region performed.
		b.mu.Lock()
		b.roll(now)
		b.taken[b.tenth%10]--
		b.mu.Unlock()
		return
	default:
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.roll(now)
	b.taken[b.tenth%10]-- // sent, and not taken
	b.refusedBy[b.tenth%10]++
	if configured > 0 {
		return // another client of the account, or another gateway: passed on as it is
	}
	// A region at its rate refuses calls second after second; a 429 now
	// and then is for something else (a cache's own limit, an item's
	// throughput), and must not hold every client's rate down. Nor is a
	// refusal while the budget sends well under its rate.
	refused, taken := 0, b.lastSecond()
	for _, n := range b.refusedBy {
		refused += n
	}
	metered := b.learned > 0 && !now.After(b.held)
	if refused < budgetEvidence || metered && float64(taken+refused) < 0.8*b.learned {
		return
	}
	b.lastRefused = now
	switch {
	case !metered:
		// What it took in the last second; it rises no higher (see limit).
		b.learned = float64(max(1, taken))
		b.ceiling, b.raised, b.lowered = b.learned, now, now
	case now.Sub(b.lowered) >= budgetLowerEvery:
		// Refused within the budget: it is above the region's rate (what
		// the region took in the second it first refused included its
		// burst), or the account is busier. It rises again no higher than
		// what the region took.
		b.ceiling = min(b.learned, float64(max(1, taken)))
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
