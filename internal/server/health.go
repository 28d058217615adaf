package server

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/pyrycode/relay/internal/buildinfo"
	"github.com/pyrycode/relay/internal/relay"
)

// The health endpoints, on the public listener and on --metrics-listen
// (docs/deploy.md §5, TM-LEAK-3). None is admission-controlled, none reads
// the request, and none says more than it must:
//
//	GET /livez    200 "ok\n" while the process serves HTTP, lame duck included:
//	              a liveness probe restarts a process that answers nothing.
//	GET /readyz   200 "ok\n" when the relay should get new clients, else 503
//	              with an empty body and Retry-After: before every listener
//	              serves, from the first SIGTERM (lame duck, then the drain),
//	              and in cluster mode while NATS is not connected or the
//	              claims bucket is not available (every claim would get 1013).
//	GET /healthz  the same status as /readyz; 200 carries the counts, the
//	              build's version and the uptime (kept for the monitors and
//	              balancers pointed at it before /readyz existed).
//
// Why a 503 says no reason: the public listener answers anyone, and the
// reason (NATS down) is the operator's, in the log and in
// relay_cluster_nats_connected.
const healthOK = "ok\n"

// Why the relay is not ready: a closed set, for tests and the log.
const (
	notReadyStarting = "starting"            // a listener is not serving yet
	notReadyDraining = "draining"            // lame duck or drain
	notReadyCluster  = "cluster_unavailable" // NATS down, or no claims bucket yet
)

// healthRoutes registers /livez, /readyz and /healthz on mux.
func (s *Server) healthRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /livez", s.livez)
	mux.HandleFunc("GET /readyz", s.readyz)
	mux.HandleFunc("GET /healthz", s.healthz)
}

// notReady says why the relay should get no new clients, "" when it should.
func (s *Server) notReady() string {
	switch {
	case !s.serving.Load():
		return notReadyStarting
	case s.lameDuck.Load() || s.relay.Draining():
		return notReadyDraining
	case s.cluster != nil && !s.cluster.Ready():
		return notReadyCluster
	}
	return ""
}

// Ready reports whether /readyz answers 200 (tests, cmd/relay).
func (s *Server) Ready() bool { return s.notReady() == "" }

// unready answers 503 with an empty body. no-store: a cache in front must
// not answer for a relay in another state.
func unready(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	emptyStatus(w, http.StatusServiceUnavailable)
}

func okText(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(healthOK))
}

func (s *Server) livez(w http.ResponseWriter, _ *http.Request) { okText(w) }

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.notReady() != "" {
		unready(w)
		return
	}
	okText(w)
}

// healthz reports counts, the build's version and the uptime: never a
// server-id, address or token. It answers 503 whenever /readyz does, so a
// balancer checking it stops sending clients to a relay that is draining
// or, in cluster mode, cut off from NATS.
func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	if s.notReady() != "" {
		unready(w)
		return
	}
	st := s.relay.Stats()
	body, _ := json.Marshal(struct {
		Status string `json:"status"`
		relay.RegistryStats
		Version       string `json:"version"`
		UptimeSeconds int64  `json:"uptime_seconds"`
	}{"ok", st, buildinfo.Get().Version, int64(time.Since(s.started) / time.Second)})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}
