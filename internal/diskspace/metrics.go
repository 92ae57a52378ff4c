package diskspace

import "github.com/prometheus/client_golang/prometheus"

// The Watcher is a Prometheus collector:
//
//	fanout_disk_free_bytes{dir}      gauge: free space of the directory's filesystem, last measured
//	fanout_disk_min_free_bytes       gauge: the reserve, storage.min_free
//	fanout_storage_accepting         gauge: 1 while events are taken, 0 while they are answered 503
//	fanout_storage_degraded          gauge: 1 from a write that met a full disk until space and ballast are back
//	fanout_storage_ballast_bytes     gauge: size of the ballast held (0 once released)
//	fanout_storage_disk_full_total   counter: writes that met a full disk
var _ prometheus.Collector = (*Watcher)(nil)

var (
	descFree      = prometheus.NewDesc("fanout_disk_free_bytes", "Free space of the filesystem of a directory fanout writes to, last measured.", []string{"dir"}, nil)
	descMinFree   = prometheus.NewDesc("fanout_disk_min_free_bytes", "The free space below which events are refused (storage.min_free).", nil, nil)
	descAccepting = prometheus.NewDesc("fanout_storage_accepting", "1 while the tracking API takes events, 0 while it answers 503 for lack of disk space.", nil, nil)
	descDegraded  = prometheus.NewDesc("fanout_storage_degraded", "1 from a write that met a full disk until the space and the ballast are back.", nil, nil)
	descBallast   = prometheus.NewDesc("fanout_storage_ballast_bytes", "Size of the emergency ballast file held; 0 once released.", nil, nil)
	descDiskFull  = prometheus.NewDesc("fanout_storage_disk_full_total", "Writes that met a full disk.", nil, nil)
)

// Describe implements prometheus.Collector.
func (w *Watcher) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFree, descMinFree, descAccepting, descDegraded, descBallast, descDiskFull} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (w *Watcher) Collect(ch chan<- prometheus.Metric) {
	s := w.State()
	for _, d := range s.Dirs {
		if d.FreeBytes >= 0 {
			ch <- prometheus.MustNewConstMetric(descFree, prometheus.GaugeValue, float64(d.FreeBytes), d.Name)
		}
	}
	ch <- prometheus.MustNewConstMetric(descMinFree, prometheus.GaugeValue, float64(s.MinFreeBytes))
	ch <- prometheus.MustNewConstMetric(descAccepting, prometheus.GaugeValue, boolValue(s.Accepting))
	ch <- prometheus.MustNewConstMetric(descDegraded, prometheus.GaugeValue, boolValue(s.Degraded))
	ch <- prometheus.MustNewConstMetric(descBallast, prometheus.GaugeValue, float64(s.BallastBytes))
	ch <- prometheus.MustNewConstMetric(descDiskFull, prometheus.CounterValue, float64(s.DiskFull))
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
