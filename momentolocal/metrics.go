package momentolocal

import (
	"errors"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// The embedded backend's metrics, caddy_momento_local_items and
// caddy_momento_local_bytes, are computed when scraped from the handlers of
// the loaded config (summed, when a config has several).
var (
	liveMu   sync.Mutex
	live     = map[*Handler]struct{}{}
	itemDesc = prometheus.NewDesc("caddy_momento_local_items",
		"Items held by the embedded momento_local backend.", nil, nil)
	byteDesc = prometheus.NewDesc("caddy_momento_local_bytes",
		"Key and value bytes held by the embedded momento_local backend.", nil, nil)
)

type storeCollector struct{}

// Describe implements prometheus.Collector.
func (storeCollector) Describe(ch chan<- *prometheus.Desc) { ch <- itemDesc; ch <- byteDesc }

// Collect implements prometheus.Collector.
func (storeCollector) Collect(ch chan<- prometheus.Metric) {
	liveMu.Lock()
	var items, bytes float64
	for h := range live {
		items += float64(h.Len())
		bytes += float64(h.Bytes())
	}
	liveMu.Unlock()
	ch <- prometheus.MustNewConstMetric(itemDesc, prometheus.GaugeValue, items)
	ch <- prometheus.MustNewConstMetric(byteDesc, prometheus.GaugeValue, bytes)
}

// registerMetrics adds the collector to a config's registry (Caddy makes a
// fresh one per config) and counts h among the live handlers.
func registerMetrics(reg prometheus.Registerer, h *Handler) error {
	if reg != nil {
		if err := reg.Register(storeCollector{}); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	liveMu.Lock()
	live[h] = struct{}{}
	liveMu.Unlock()
	return nil
}

func unregisterLive(h *Handler) {
	liveMu.Lock()
	delete(live, h)
	liveMu.Unlock()
}
