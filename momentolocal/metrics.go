package momentolocal

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// The embedded backend's metrics are computed when scraped, from the
// backends kept in the pool: they follow the data across reloads rather
// than any one config's handlers, and a backend counts once however many
// handlers (of the config in force and of one still draining) share it.
// They are summed over backends, so that the series stay unlabelled as
// they always were.
var (
	itemDesc = prometheus.NewDesc("caddy_momento_local_items",
		"Items held by the embedded momento_local backend.", nil, nil)
	byteDesc = prometheus.NewDesc("caddy_momento_local_bytes",
		"Key and value bytes held by the embedded momento_local backend.", nil, nil)
	memoryDesc = prometheus.NewDesc("caddy_momento_local_memory_bytes",
		"Memory counted against max_memory by the embedded momento_local backend: items and topic messages with their overhead.", nil, nil)
	subscriptionsDesc = prometheus.NewDesc("caddy_momento_local_subscriptions",
		"Subscribe requests open at the embedded momento_local backend, as max_subscriptions counts them.", nil, nil)
	throttledDesc = prometheus.NewDesc("caddy_momento_local_throttled_total",
		"Requests the embedded momento_local backend answered 429, by the simulated limit they exceeded.", []string{"limit"}, nil)
)

type storeCollector struct{}

// Describe implements prometheus.Collector.
func (storeCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- itemDesc
	ch <- byteDesc
	ch <- memoryDesc
	ch <- subscriptionsDesc
	ch <- throttledDesc
}

// Collect implements prometheus.Collector.
func (storeCollector) Collect(ch chan<- prometheus.Metric) {
	var items, bytes, memory, subscriptions float64
	var throttled [len(limitNames)]float64
	backends.Range(func(_, v any) bool {
		s := v.(*state)
		items += float64(s.store.len())
		bytes += float64(s.store.size())
		memory += float64(s.store.memory())
		subscriptions += float64(s.limits.subscriptions.n.Load())
		for i := range throttled {
			throttled[i] += float64(s.limits.throttled[i].Load())
		}
		return true
	})
	ch <- prometheus.MustNewConstMetric(itemDesc, prometheus.GaugeValue, items)
	ch <- prometheus.MustNewConstMetric(byteDesc, prometheus.GaugeValue, bytes)
	ch <- prometheus.MustNewConstMetric(memoryDesc, prometheus.GaugeValue, memory)
	ch <- prometheus.MustNewConstMetric(subscriptionsDesc, prometheus.GaugeValue, subscriptions)
	for i, n := range throttled {
		ch <- prometheus.MustNewConstMetric(throttledDesc, prometheus.CounterValue, n, limitNames[i])
	}
}

// registerMetrics adds the collector to a config's registry. Caddy makes a
// fresh registry for every config, so this runs on every provision; the
// collector is one value, so a second handler of the same config finds it
// registered already.
func registerMetrics(reg prometheus.Registerer) error {
	if reg == nil {
		return nil
	}
	if err := reg.Register(storeCollector{}); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			return err
		}
	}
	return nil
}
