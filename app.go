package momento

import (
	"cmp"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(App{})
}

// App is the `momento` app: for one config, the single owner of every
// region the momento handlers reach, and of each region's shared state
// (circuit breaker, connection pools) kept across reloads.
//
// Regions may be defined here, once, and used by any number of handlers;
// a handler's own inline region blocks are registered here too, so that a
// region has one definition per config: two handlers that define the same
// region differently are refused at load, rather than one silently
// overriding the other's breaker settings.
type App struct {
	// Regions defined for every momento handler in the config (the
	// Caddyfile's global `momento { region … }` options). A handler uses
	// them all when it defines none itself, or names the ones it uses.
	Regions []RegionConfig `json:"regions,omitempty"`

	// How many clients may wait on topics (long polls) at once in this
	// gateway, across regions and handlers; past it a new one is answered
	// 429 with Retry-After. Default: 10000.
	MaxWaiting int `json:"max_waiting,omitempty"`

	// How many of those may come from one client address (Caddy's
	// client_ip, which honours trusted_proxies). Default: no limit, as many
	// browsers may share one address behind a NAT.
	MaxWaitingPerClient int `json:"max_waiting_per_client,omitempty"`

	// How many calls a second one client address (Caddy's client_ip) may
	// make to the regions: cache operations and publishes that reach a
	// region, not reads answered by the local cache or by a call already
	// in flight. Past it, 429 with Retry-After. Default: no limit, as a
	// backend service, or many browsers behind a NAT, may rightly send many.
	MaxOpsPerClient int `json:"max_ops_per_client,omitempty"`

	// How topic subscribers are served: the shared upstream subscription
	// per topic (the hub), its buffer, Server-Sent Events.
	Topics *TopicsConfig `json:"topics,omitempty"`

	logger *zap.Logger
	// defined holds the regions defined so far in this config.
	defined *definedRegions
}

// waitLimits are an app's limits on waiting clients, with defaults.
type waitLimits struct{ maxWaiting, maxPerClient, maxOpsPerClient int }

func (a *App) limits() waitLimits {
	if a == nil {
		return waitLimits{maxWaiting: defaultMaxWaiting}
	}
	return waitLimits{maxWaiting: cmp.Or(a.MaxWaiting, defaultMaxWaiting), maxPerClient: a.MaxWaitingPerClient, maxOpsPerClient: a.MaxOpsPerClient}
}

// topics are the app's topic settings, with defaults.
func (a *App) topics() topicSettings {
	if a == nil {
		return (*TopicsConfig)(nil).settings()
	}
	return a.Topics.settings()
}

// definedRegions are a config's regions by name, each with the definition
// it came from. Handlers add theirs as they are provisioned.
type definedRegions struct {
	mu     sync.Mutex
	byName map[string]*appRegion
}

type appRegion struct {
	cfg    RegionConfig
	region *region
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "momento",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision defines the app's own regions.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if err := a.Validate(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry(), a); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	a.defined = &definedRegions{byName: map[string]*appRegion{}}
	for _, rc := range a.Regions {
		if _, err := a.define(rc); err != nil {
			return err
		}
	}
	return nil
}

// Validate checks what can be checked without resolving placeholders.
func (a *App) Validate() error {
	if a.MaxWaiting < 0 {
		return fieldErrorf("max_waiting", "max_waiting %d must be positive", a.MaxWaiting)
	}
	if a.MaxOpsPerClient < 0 {
		return fieldErrorf("max_ops_per_client", "max_ops_per_client %d must be positive", a.MaxOpsPerClient)
	}
	if a.MaxWaitingPerClient < 0 {
		return fieldErrorf("max_waiting_per_client", "max_waiting_per_client %d must be positive", a.MaxWaitingPerClient)
	}
	if err := a.Topics.validate(); err != nil {
		return err
	}
	return validateRegions(a.Regions, "regions", nil, true)
}

// Start implements caddy.App; the regions need no background work.
func (a *App) Start() error { return nil }

// Stop implements caddy.App.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's hold on each region's shared state; a
// region no config uses any more closes its idle connections.
func (a *App) Cleanup() error {
	a.defined.mu.Lock()
	defer a.defined.mu.Unlock()
	for _, ar := range a.defined.byName {
		_, _ = regionStates.Delete(ar.region.stateKey())
	}
	return nil
}

// define resolves a region definition for this config, or returns the
// region already defined under its name if the definitions agree.
func (a *App) define(rc RegionConfig) (*region, error) {
	a.defined.mu.Lock()
	defer a.defined.mu.Unlock()
	if prev, ok := a.defined.byName[rc.Name]; ok {
		if !prev.cfg.same(rc) {
			return nil, withDefinedAt(fmt.Errorf("region %q is defined twice with different settings (also %s): define it once, in the global `momento` options, and name it in each handler",
				rc.Name, cmp.Or(prev.cfg.DefinedAt, "in another handler")), rc.DefinedAt)
		}
		return prev.region, nil
	}
	rg, err := resolveRegion(rc, caddy.NewReplacer())
	if err != nil {
		return nil, withDefinedAt(err, rc.DefinedAt)
	}
	if err := rg.attach(a.logger); err != nil {
		return nil, err
	}
	if !strings.Contains(rc.Token, "{") && !rg.isLoopback() {
		a.logger.Warn("a token is written into the config itself, so `caddy adapt` and the admin API show it: use token {env.MOMENTO_API_KEY} or {file./path} instead",
			zap.String("region", rg.name), zap.String("token_fingerprint", rg.token.Fingerprint()))
	}
	a.logger.Info("momento region",
		zap.String("region", rg.name),
		zap.String("endpoint", rg.endpoint),
		zap.String("token_kind", string(rg.token.Kind())),
		zap.String("token_fingerprint", rg.token.Fingerprint()))
	a.defined.byName[rc.Name] = &appRegion{cfg: rc, region: rg}
	return rg, nil
}

// lookup returns a region defined in this config by name.
func (a *App) lookup(name string) (*region, bool) {
	a.defined.mu.Lock()
	defer a.defined.mu.Unlock()
	ar, ok := a.defined.byName[name]
	if !ok {
		return nil, false
	}
	return ar.region, true
}

// globalRegions returns the regions of the global options, in their order.
func (a *App) globalRegions() []*region {
	out := make([]*region, 0, len(a.Regions))
	for _, rc := range a.Regions {
		if rg, ok := a.lookup(rc.Name); ok {
			out = append(out, rg)
		}
	}
	return out
}

// regions returns every region of this config, sorted by name.
func (a *App) regions() []*region {
	a.defined.mu.Lock()
	defer a.defined.mu.Unlock()
	out := make([]*region, 0, len(a.defined.byName))
	for _, ar := range a.defined.byName {
		out = append(out, ar.region)
	}
	slices.SortFunc(out, func(x, y *region) int { return strings.Compare(x.name, y.name) })
	return out
}

// activeApp returns the momento app of the running config, if it has one.
func activeApp() (*App, bool) {
	app, err := caddy.ActiveContext().AppIfConfigured("momento")
	if err != nil {
		return nil, false
	}
	a, ok := app.(*App)
	return a, ok
}

func withDefinedAt(err error, definedAt string) error {
	if definedAt == "" {
		return err
	}
	return fmt.Errorf("%w, at %s", err, definedAt)
}

// regionStates holds each region's shared state across config reloads,
// keyed by region name and endpoint: a reload that keeps a region keeps its
// breaker state and warm connections; one that removes the region or
// changes its endpoint starts fresh.
var regionStates = caddy.NewUsagePool()

// regionState is the part of a region that outlives one config.
type regionState struct {
	// subscriptions counts the upstream long polls open at once: the hubs,
	// and the clients' own with the hub off.
	subscriptions atomic.Int64
	// subscriptionShares shares them among client networks.
	subscriptionShares shares
	// hubs are the region's topic hubs, and fannedOut counts the messages
	// they handed to subscribers.
	hubs      regionHubs
	fannedOut atomic.Int64
	// reads are the calls in flight and the local caches of the region.
	reads regionReads
	// probeUploads counts the bytes of uploads read whole before they may
	// probe the half-open breaker (see probeUploadWait).
	probeUploads atomic.Int64
	// ops and publishes meter the calls a second sent to the region.
	ops, publishes budget
	breaker        *breaker
	transport      *http.Transport
	longPoll       *http.Transport // subscribes
}

// Destruct ends the region's topic hubs and closes its idle upstream
// connections once no config uses the region.
func (s *regionState) Destruct() error {
	s.hubs.mu.Lock()
	hubs := slices.Collect(maps.Values(s.hubs.byKey))
	s.hubs.mu.Unlock()
	for _, hb := range hubs {
		hb.remove()
	}
	s.reads.stop()
	s.transport.CloseIdleConnections()
	s.longPoll.CloseIdleConnections()
	return nil
}

func (rg *region) stateKey() string { return rg.name + " " + rg.endpoint }

// attach takes (or creates) the region's shared state and applies this
// config's breaker settings to it.
func (rg *region) attach(logger *zap.Logger) error {
	val, loaded, err := regionStates.LoadOrNew(rg.stateKey(), func() (caddy.Destructor, error) {
		return &regionState{
			ops:       budget{kind: budgetOps},
			publishes: budget{kind: budgetPublishes},
			breaker:   newBreaker(rg.name, rg.breaker, logger),
			transport: newTransport(),
			longPoll:  newTransport(),
		}, nil
	})
	if err != nil {
		return fmt.Errorf("region %q: %v", rg.name, err)
	}
	rg.state = val.(*regionState)
	if loaded {
		rg.state.breaker.logger.Store(logger)
		rg.state.breaker.configure(rg.breaker)
	}
	return nil
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
