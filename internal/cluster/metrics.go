package cluster

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pyrycode/relay/internal/metrics"
)

// claimResults are the result labels of relay_cluster_claims_total, a
// closed set: created, reclaimed (another instance's grace slot), takeover
// (another instance's dead binary), local (a new binary for this
// instance's own claim: its grace slot or a dead binary here), stale (a
// claim of this instance's id it no longer served), ended (a claim whose
// owner's incarnation ended: crashed and revoked, or restarted), conflict
// (4409), unavailable (1013: NATS or the store not reachable), unreachable
// (1013: the owner's session lives but it does not answer), reasserted (a
// claim rewritten under this instance's new incarnation after its session
// was revoked), lost (a claim another instance replaced), swept (an ended
// incarnation's claim deleted), invalid (a value that is not a claim).
var claimResults = []string{"created", "reclaimed", "takeover", "local", "stale", "ended", "conflict", "unavailable", "unreachable", "reasserted", "lost", "swept", "invalid"}

// sessionResults are the result labels of relay_cluster_sessions_total, a
// closed set: revoked (this instance revoked a session it judged dead),
// lost (this instance's own session was revoked; it re-established it).
var sessionResults = []string{"revoked", "lost"}

// requestDrop is why a request from another instance (a probe or a join)
// went unanswered: the reason label of relay_cluster_requests_dropped_total,
// a closed set. The asker times out and refuses its client 1013.
type requestDrop string

const (
	// dropHandlersBusy: the handlers that may wait (probes, joins waiting
	// for a claim in progress) were all in use (64).
	dropHandlersBusy requestDrop = "handlers_busy"
)

var allRequestDrops = []requestDrop{dropHandlersBusy}

type clusterMetrics struct {
	claims        *prometheus.CounterVec
	connected     prometheus.Gauge
	sent          prometheus.Counter
	received      prometheus.Counter
	malformed     prometheus.Counter
	slowConsumer  prometheus.Counter
	refreshErrors prometheus.Counter
	duplicates    prometheus.Counter
	sessions      *prometheus.CounterVec
	// requestsDropped: requests left unanswered, by requestDrop.
	requestsDropped *prometheus.CounterVec
}

func newMetrics(m *metrics.Metrics) *clusterMetrics {
	cm := &clusterMetrics{
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_cluster_claims_total", Help: "Cluster claim outcomes by result.",
		}, []string{"result"}),
		connected:     prometheus.NewGauge(prometheus.GaugeOpts{Name: "relay_cluster_nats_connected", Help: "1 while this instance's NATS connection is up."}),
		sent:          prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_cluster_messages_sent_total", Help: "Cross-instance link messages published."}),
		received:      prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_cluster_messages_received_total", Help: "Cross-instance link messages received."}),
		malformed:     prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_cluster_messages_malformed_total", Help: "Cross-instance messages dropped as unparseable."}),
		slowConsumer:  prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_cluster_slow_consumer_total", Help: "Times NATS dropped messages for this instance."}),
		refreshErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_cluster_lease_refresh_errors_total", Help: "Session refreshes (this instance's heartbeat in the claims bucket) that failed (retried)."}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_cluster_sessions_total", Help: "Instance sessions revoked by this instance, and this instance's own session lost, by result.",
		}, []string{"result"}),
		duplicates: prometheus.NewCounter(prometheus.CounterOpts{Name: "relay_cluster_duplicate_instances_total", Help: "Times another live instance was found using this instance's id after start."}),
		requestsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "relay_cluster_requests_dropped_total", Help: "Requests from other instances (probes, joins) left unanswered, by reason.",
		}, []string{"reason"}),
	}
	for _, r := range claimResults {
		cm.claims.WithLabelValues(r)
	}
	for _, r := range sessionResults {
		cm.sessions.WithLabelValues(r)
	}
	for _, r := range allRequestDrops {
		cm.requestsDropped.WithLabelValues(string(r))
	}
	if m != nil {
		m.Register(cm.claims, cm.connected, cm.sent, cm.received, cm.malformed, cm.slowConsumer, cm.refreshErrors, cm.duplicates, cm.sessions, cm.requestsDropped)
	}
	return cm
}
