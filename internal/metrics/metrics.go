// Package metrics holds the relay's Prometheus collectors. Every label value
// comes from a closed set defined in code (roles, drop reasons, rejection
// reasons, relay-chosen close codes): never a server-id, address, user agent
// or any other attacker-chosen value, which would leak metadata and let a
// client grow the series set without bound.
package metrics

import (
	"net/http"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/pyrycode/relay/internal/buildinfo"
)

// Metrics is the set of collectors the relay updates. Use New; the zero
// value is not usable.
type Metrics struct {
	reg *prometheus.Registry

	// Upgrades counts accepted WebSocket upgrades by role ("binary", "phone").
	Upgrades *prometheus.CounterVec
	// Closes counts connection ends by role and cause: a relay-chosen close
	// code as a decimal string, or "peer" when the other side ended it.
	Closes *prometheus.CounterVec
	// FramesRouted counts frames forwarded, by direction ("to_binary", "to_phone").
	FramesRouted *prometheus.CounterVec
	// FramesDropped counts frames discarded, by relay.DropReason.
	FramesDropped *prometheus.CounterVec
	// Rejected counts requests refused before the upgrade, by reason: an
	// admission.Reason, a relay.RejectReason or the server's host_mismatch
	// (421), each set pre-registered by its owner.
	Rejected *prometheus.CounterVec
	// SocketsRefused counts sockets closed before any request, at accept
	// (socket caps) or at the PROXY header, by admission.SocketReason. They
	// are not requests, so they are not counted in Rejected.
	SocketsRefused *prometheus.CounterVec
	// Panics counts recovered handler panics.
	Panics prometheus.Counter
	// HTTPErrors counts net/http's own error lines by kind ("tls_handshake",
	// "other"); their text (client SNI, ALPN, addresses) is never logged.
	HTTPErrors *prometheus.CounterVec
	// PushWakes counts binaries' push wakes by push.Outcome.
	PushWakes *prometheus.CounterVec
	// PushInFlight is the FCM requests running now (at most --push-max-in-flight).
	PushInFlight prometheus.Gauge
	// ClusterLinksLost counts cross-instance phones closed 1011 because
	// their frames may have been lost, by relay.LinkLoss.
	ClusterLinksLost *prometheus.CounterVec
	// ClusterProxies is the phone sockets held here whose binary is on
	// another instance (cluster mode): in no registry here, so neither in
	// Phones; 0 again once they have all left.
	ClusterProxies prometheus.Gauge
	// CertNotAfter is the serving TLS certificate's expiry (Unix seconds);
	// 0 until a certificate is loaded, obtained or found in the cache.
	CertNotAfter prometheus.Gauge
	// ACMEErrors counts failures to obtain or cache the autocert
	// certificate for the configured domain.
	ACMEErrors prometheus.Counter
	// CertReloads counts SIGHUP reloads of the static certificate by result
	// ("ok", "refused").
	CertReloads *prometheus.CounterVec
	// QueuedBytesLimit is --max-queued-bytes (0 = none), so dashboards and
	// alerts can put relay_queued_bytes against its ceiling.
	QueuedBytesLimit prometheus.Gauge
	// Binaries, Phones and GraceSlots are the registry's current sizes.
	Binaries, Phones, GraceSlots prometheus.Gauge
	// queuedBytes reads the relay-wide total of bytes queued for phones at
	// scrape time (see SetQueuedBytesSource).
	queuedBytes atomic.Pointer[func() int64]
}

// SetQueuedBytesSource makes relay_queued_bytes report f() at every scrape.
// Reading the relay's own atomic counter there, rather than Set-ing a gauge
// after each change, means concurrent changes can never leave the gauge
// showing a stale value.
func (m *Metrics) SetQueuedBytesSource(f func() int64) { m.queuedBytes.Store(&f) }

// New registers the relay's collectors (plus Go runtime and process
// collectors) in a private registry.
func New() *Metrics {
	reg := prometheus.NewRegistry()
	f := func(c prometheus.Collector) { reg.MustRegister(c) }
	m := &Metrics{
		reg: reg,
		Upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_upgrades_total", Help: "Accepted WebSocket upgrades by role.",
		}, []string{"role"}),
		Closes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_connection_closes_total", Help: "Connection ends by role and cause (relay close code or peer).",
		}, []string{"role", "cause"}),
		FramesRouted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_frames_routed_total", Help: "Frames forwarded by direction.",
		}, []string{"direction"}),
		FramesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_frames_dropped_total", Help: "Frames discarded by reason.",
		}, []string{"reason"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_requests_rejected_total", Help: "Requests refused before the WebSocket upgrade, by reason.",
		}, []string{"reason"}),
		SocketsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_sockets_refused_total", Help: "Sockets closed before any request: at accept (socket caps) or at the PROXY header, by reason.",
		}, []string{"reason"}),
		Panics: prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_panics_total", Help: "Recovered handler panics."}),
		HTTPErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_http_errors_total", Help: "net/http server errors (TLS handshakes, broken connections) by kind.",
		}, []string{"kind"}),
		PushWakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_push_wakes_total", Help: "Push wakes from binaries by outcome.",
		}, []string{"outcome"}),
		PushInFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_push_in_flight", Help: "FCM requests running now."}),
		CertNotAfter: prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_tls_cert_not_after_seconds", Help: "Expiry of the serving TLS certificate, Unix seconds."}),
		ACMEErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_acme_errors_total", Help: "Failures to obtain or cache the autocert certificate."}),
		CertReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_tls_cert_reloads_total", Help: "SIGHUP reloads of the static TLS certificate by result.",
		}, []string{"result"}),
		QueuedBytesLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "relay_queued_bytes_limit", Help: "The relay-wide ceiling on queued bytes (--max-queued-bytes; 0 = none).",
		}),
		Binaries:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_binaries", Help: "Live binaries holding a slot."}),
		Phones:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_phones", Help: "Connected phones."}),
		GraceSlots: prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_grace_slots", Help: "Slots in their grace period."}),
		ClusterLinksLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_cluster_links_lost_total", Help: "Cross-instance phones closed 1011 because frames may have been lost, by reason.",
		}, []string{"reason"}),
		ClusterProxies: prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_cluster_proxies", Help: "Phone sockets here whose binary is on another instance."}),
	}
	f(m.Upgrades)
	// Closed label sets are pre-registered, so a fresh relay already exports
	// them at zero (rate() and alerts see a series from the first scrape).
	for _, role := range []string{"binary", "phone"} {
		m.Upgrades.WithLabelValues(role)
	}
	f(m.Closes)
	f(m.FramesRouted)
	f(m.FramesDropped)
	f(m.Rejected)
	f(m.SocketsRefused)
	f(m.Panics)
	f(m.HTTPErrors)
	for _, kind := range []string{"tls_handshake", "other"} {
		m.HTTPErrors.WithLabelValues(kind)
	}
	f(m.PushWakes)
	f(m.PushInFlight)
	f(m.ClusterLinksLost)
	f(m.ClusterProxies)
	f(m.CertNotAfter)
	f(m.ACMEErrors)
	f(m.CertReloads)
	for _, r := range []string{"ok", "refused"} {
		m.CertReloads.WithLabelValues(r)
	}
	f(m.QueuedBytesLimit)
	f(m.Binaries)
	f(m.Phones)
	f(m.GraceSlots)
	f(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "relay_queued_bytes", Help: "Bytes queued for phones, relay-wide."}, func() float64 {
		if src := m.queuedBytes.Load(); src != nil {
			return float64((*src)())
		}
		return 0
	}))
	// relay_build_info is 1 with the build's own version and toolchain as
	// labels (one series, values fixed at build time, never client input),
	// so dashboards can tell which release and Go every instance runs.
	bi := buildinfo.Get()
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "relay_build_info", Help: "Always 1; the running build's version and Go toolchain as labels.",
	}, []string{"version", "goversion"})
	build.WithLabelValues(bi.Version, bi.GoVersion).Set(1)
	f(build)
	f(collectors.NewGoCollector())
	f(collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Register adds another package's collectors (cluster mode's) to the
// registry /metrics serves. It panics on a duplicate, a programming error.
func (m *Metrics) Register(cs ...prometheus.Collector) { m.reg.MustRegister(cs...) }

// Handler serves the registry in the Prometheus text format. Serve it only
// on the loopback-bound metrics listener.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}
