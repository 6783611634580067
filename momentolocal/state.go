package momentolocal

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/caddyserver/caddy/v2"
)

// DefaultName is the name of a backend whose name is unset.
const DefaultName = "default"

// backends holds each named backend's state across config reloads. A
// reload provisions the new config's handlers while the old config still
// serves, so the new handler finds the old one's state under the same
// name and takes it over. When the last handler of a name is cleaned up
// (the backend left the config), the pool destructs its state.
var backends = caddy.NewUsagePool()

// generation orders handlers by when they were started: the settings of
// the latest one are in force over a state.
var generation atomic.Uint64

// state is what a backend keeps across config reloads: its items and
// topics, and the sweeper that expires items. Handlers are a config's
// view of a state; a state outlives them.
type state struct {
	name    string
	store   *store
	topics  *topics
	sweeper *sweeper
	limits  limits
	logger  atomic.Pointer[zap.Logger] // the latest config's

	// applied is the generation of the handler whose settings are in
	// force; see apply.
	applied atomic.Uint64

	mu       sync.Mutex
	settings settings // in force, guarded by mu

	// owner is the config (its context's Done channel) that last took
	// this state, and ownerConfig that handler's configuration: two
	// handlers of one config that share a name must agree.
	owner       <-chan struct{}
	ownerConfig string
}

// settings are the parts of a handler's configuration that act on the
// data a state keeps, rather than on requests.
type settings struct {
	maxMemory   int64
	maxItemSize int64
	topicBuffer int
	caches      map[string]struct{} // nil: every cache exists
}

// newState creates the state of a backend, with h's settings in force and
// its sweeper running.
func newState(h *Handler) *state {
	now := h.hooks.now
	if now == nil {
		now = time.Now
	}
	s := &state{name: h.Name}
	s.store = newStore(h.MaxMemory, now)
	s.topics = newTopics(s.store, h.TopicBuffer, now, h.hooks.onWait)
	s.sweeper = startSweeper(s.store, sweepInterval, h.hooks.sweepTicks, nil)
	s.settings = h.settings()
	s.limits.set(h)
	s.applied.Store(h.gen)
	s.logger.Store(h.logger)
	return s
}

// Destruct frees the backend's data when no config uses it any more (the
// pool calls it), even while requests of the last config are still
// draining through its handlers and hold the state.
func (s *state) Destruct() error {
	s.sweeper.close()
	items, topics := s.store.len(), s.topics.count()
	s.store.clear()
	s.topics.clear()
	s.logger.Load().Info("momento_local left the config: its data is freed",
		zap.String("name", s.name), zap.Int("items", items), zap.Int("topics", topics))
	return nil
}

// take makes h, a handler being provisioned, one of the state's: the
// handlers of one config that share a name must share a configuration too,
// or the one provisioned last would silently set the other's bounds.
func (s *state) take(h *Handler, config <-chan struct{}) error {
	js, err := json.Marshal(h)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.owner == config && s.ownerConfig != string(js) {
		return fmt.Errorf("momento_local %q appears twice in this config with different settings: give each its own name (the name subdirective), or both the same settings", s.name)
	}
	s.owner, s.ownerConfig = config, string(js)
	return nil
}

// apply puts h's settings in force over the kept data, unless a handler
// started later already has. Handlers call it on their first request
// rather than when provisioned: a config that fails to load after its
// handlers were provisioned never serves, and so never evicts or drops
// what the running config still serves.
func (s *state) apply(h *Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if h.gen <= s.applied.Load() {
		return
	}
	old, now := s.settings, h.settings()
	s.settings = now
	before := s.store.len()
	if gone := droppedCaches(old.caches, now.caches); gone != nil {
		s.store.dropItems(func(e *entry) bool { return gone(e.k.cache) })
		s.topics.dropCaches(gone)
	}
	if now.maxItemSize < old.maxItemSize {
		s.store.dropItems(func(e *entry) bool { return e.size() > now.maxItemSize })
	}
	s.topics.setCapacity(now.topicBuffer)
	s.store.setBound(now.maxMemory)
	s.limits.set(h)
	s.applied.Store(h.gen)
	s.logger.Store(h.logger)
	if old.equal(now) {
		return // another handler of the same backend and settings
	}
	s.logger.Load().Info("momento_local settings in force over the kept data",
		zap.String("name", s.name),
		zap.Int("items", s.store.len()),
		zap.Int("items_dropped", before-s.store.len()),
		zap.Int64("max_memory", now.maxMemory),
		zap.Int64("max_item_size", now.maxItemSize),
		zap.Int("topic_buffer", now.topicBuffer))
}

// droppedCaches returns whether a cache that existed under the old list no
// longer exists under the new one, or nil when none was dropped. Like a
// cache deleted at Momento, a cache taken off the list loses its items and
// topics: adding it back later does not bring them back.
func droppedCaches(old, now map[string]struct{}) func(cache string) bool {
	if now == nil {
		return nil // every cache exists
	}
	gone := func(cache string) bool { _, ok := now[cache]; return !ok }
	if old == nil {
		return gone
	}
	for c := range old {
		if gone(c) {
			return gone
		}
	}
	return nil
}

func (a settings) equal(b settings) bool {
	return a.maxMemory == b.maxMemory && a.maxItemSize == b.maxItemSize &&
		a.topicBuffer == b.topicBuffer && (a.caches == nil) == (b.caches == nil) && maps.Equal(a.caches, b.caches)
}

// settings returns the part of h's configuration that acts on kept data.
func (h *Handler) settings() settings {
	return settings{
		maxMemory:   h.MaxMemory,
		maxItemSize: h.MaxItemSize,
		topicBuffer: h.TopicBuffer,
		caches:      h.caches,
	}
}

// Interface guards
var _ caddy.Destructor = (*state)(nil)
