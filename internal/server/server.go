// Package server assembles the relay process: listeners, the hardened
// http.Server around the routing core, the health endpoints, metrics and
// shutdown.
package server

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pyrycode/relay/internal/admission"
	"github.com/pyrycode/relay/internal/cluster"
	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/metrics"
	"github.com/pyrycode/relay/internal/push"
	"github.com/pyrycode/relay/internal/relay"
	"github.com/pyrycode/relay/internal/tlsconf"
)

// ErrListen wraps a listener that could not be bound. cmd/relay exits 2
// (refused) when it wraps os.ErrPermission (a low port without
// CAP_NET_BIND_SERVICE: configuration) and 1 (runtime failure, restarted by
// systemd) otherwise: a port still held by the previous process is
// transient.
var ErrListen = errors.New("relay: cannot listen")

// Server is the assembled relay process.
type Server struct {
	cfg     config.Config
	log     *slog.Logger
	metrics *metrics.Metrics
	relay   *relay.Relay
	push    *push.Sender
	admit   *admission.Controller
	cluster *cluster.Cluster // nil on a single instance

	tlsConfig   *tls.Config         // nil in insecure mode
	static      *tlsconf.StaticCert // ModeStatic: the pair SIGHUP reloads
	hosts       hostGate            // unset: any Host accepted
	acmeHandler http.Handler        // autocert mode: the port-80 handler

	// lameDuck is set by LameDuck: /readyz and /healthz answer 503 while
	// every listener keeps serving, so balancers stop sending new clients
	// before the drain closes anyone.
	lameDuck atomic.Bool
	// serving is set by Serve once every listener serves: until then the
	// relay is not ready (health.go).
	serving atomic.Bool

	// refusals logs refused requests and sockets within a line budget.
	refusals *refusalLog

	started time.Time // for /healthz uptime_seconds

	servers []*listenerServer
	// socketCaps are the public and ACME listeners' socket caps, which
	// ApplyLimits changes on SIGHUP.
	socketCaps []admission.SocketCaps
	wg         sync.WaitGroup
	errc       chan error
}

// listenerServer is one bound listener and the http.Server on it.
type listenerServer struct {
	name string // "public", "acme", "metrics": a log value, not input
	ln   net.Listener
	srv  *http.Server
}

// New validates what can be validated before binding any port (TLS
// material, the certificate cache) and builds the handler chain.
func New(cfg config.Config, log *slog.Logger) (*Server, error) {
	s := &Server{cfg: cfg, log: log, refusals: newRefusalLog(log), metrics: metrics.New(), errc: make(chan error, 4), started: time.Now()}
	if err := s.setupTLS(); err != nil {
		return nil, err
	}
	ao := cfg.Admission
	ao.OnReject = func(r admission.Reason, ip netip.Addr) {
		s.metrics.Rejected.WithLabelValues(string(r)).Inc()
		s.refusals.refused(string(r), ip)
	}
	for _, r := range admission.AllReasons {
		s.metrics.Rejected.WithLabelValues(string(r))
	}
	for _, r := range append(slices.Clone(admission.AllSocketReasons), admission.AllProxyReasons...) {
		s.metrics.SocketsRefused.WithLabelValues(string(r))
	}
	s.metrics.Rejected.WithLabelValues(reasonHostMismatch)
	adm, err := admission.New(ao) // config.Validate checked the options
	if err != nil {
		return nil, err
	}
	s.admit = adm
	// The credentials file is checked here, before any port is bound.
	s.metrics.QueuedBytesLimit.Set(float64(cfg.Relay.MaxQueuedBytes))
	ps, err := push.New(cfg.Push, push.Deps{Log: log, Metrics: s.metrics})
	if err != nil {
		return nil, cfg.NameFile(err, "fcm-credentials")
	}
	s.push = ps
	onReject := func(reason relay.RejectReason, r *http.Request) {
		if a, err := netip.ParseAddr(clientAddr(r)); err == nil {
			s.refusals.refused(string(reason), a)
		}
	}
	rl, err := relay.New(cfg.Relay, relay.Deps{Log: log, Metrics: s.metrics, RemoteAddr: clientAddr, Waker: ps, OnReject: onReject})
	if err != nil {
		return nil, err
	}
	s.relay = rl
	if cfg.Cluster.Enabled() {
		token := 0
		if cfg.Relay.ForwardV1Token {
			token = cfg.MaxHeaderBytes // a token is one header value
		}
		co := cfg.Cluster
		co.MaxLinkPayload = cluster.LinkPayload(cfg.Relay.MaxMessageBytes, token)
		c, err := cluster.Start(co, rl, log, s.metrics)
		if err != nil {
			return nil, clusterRefusal{err}
		}
		s.cluster = c
	}
	return s, nil
}

// clusterRefusal is a refusal of cluster.Start (NATS refused this
// instance, a server too old, max_payload too small...): it reads as the
// cluster's own line, which docs/cluster.md quotes, and matches
// config.ErrInvalidConfig like every other refusal to start.
type clusterRefusal struct{ error }

func (e clusterRefusal) Is(target error) bool { return target == config.ErrInvalidConfig }
func (e clusterRefusal) Unwrap() error        { return e.error }

// Relay exposes the routing core (tests, stats).
func (s *Server) Relay() *relay.Relay { return s.relay }

// binaryPaths and phonePaths are the upgrade endpoints. The /v2 paths are
// aliases that the pyry daemon's own protocol document names for its v2
// lifecycle: the relay layer is the same for v1 and v2 (v2 changes only what
// the opaque frames carry), so an alias gets the same admission, method check
// and handler, and a daemon configured with either URL works. Exact paths
// only: "/v2/server/x" is 404 like every other unknown path.
var (
	binaryPaths = []string{"/v1/server", "/v2/server"}
	phonePaths  = []string{"/v1/client", "/v2/client"}
)

// Handler is the public listener's handler chain, outermost first:
// generic bodies, panic recovery, Host check, routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	// Only the upgrade paths are admission-controlled: the health endpoints
	// must answer monitors even while a flood is being refused.
	s.healthRoutes(mux)
	for _, path := range binaryPaths {
		mux.Handle(path, s.admit.Middleware(onlyGET(s.relay.ServeBinary)))
	}
	for _, path := range phonePaths {
		mux.Handle(path, s.admit.Middleware(onlyGET(s.relay.ServePhone)))
	}
	registerTestHooks(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { emptyStatus(w, http.StatusNotFound) })
	var h http.Handler = canonicalOnly(mux)
	h = s.hosts.wrap(h, func(r *http.Request) {
		s.metrics.Rejected.WithLabelValues(reasonHostMismatch).Inc()
		s.refusals.refused(reasonHostMismatch, s.admit.ClientIP(r))
	})
	h = withRecovery(h, s.log, s.metrics)
	return withGenericBodies(h)
}

// onlyGET answers 405 to anything but a GET upgrade.
func onlyGET(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			w.Header().Set("Allow", http.MethodGet)
			emptyStatus(w, http.StatusMethodNotAllowed)
			return
		}
		h(w, r)
	}
}

// clientAddr is the client address the admission layer resolved (trusted
// proxies' X-Forwarded-For, PROXY header), else the socket peer.
func clientAddr(r *http.Request) string {
	if a, ok := admission.FromContext(r.Context()); ok {
		return a.String()
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// httpServer returns an http.Server hardened for untrusted clients. Its read
// and write timeouts bound plain HTTP requests only: the relay clears the
// deadlines of a connection it upgrades (see relay.accept), and TLS
// handshakes are bounded by the smallest of them.
func (s *Server) httpServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: s.cfg.ReadHeaderTimeout,
		ReadTimeout:       2 * s.cfg.ReadHeaderTimeout, // no route reads a body
		WriteTimeout:      s.cfg.Relay.WriteTimeout,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    s.cfg.MaxHeaderBytes,
		TLSConfig:         s.tlsConfig,
		ErrorLog:          log.New(httpErrorWriter{s.log, s.metrics, s.refusals}, "", 0),
	}
}

// httpErrorWriter receives net/http's error lines (TLS handshake failures,
// malformed connections). Their text quotes client-chosen SNI names, ALPN
// protocols and addresses, so it is counted by kind and logged as a fixed
// phrase only.
type httpErrorWriter struct {
	log      *slog.Logger
	metrics  *metrics.Metrics
	refusals *refusalLog
}

func (w httpErrorWriter) Write(p []byte) (int, error) {
	kind := "other"
	if bytes.Contains(p, []byte("TLS handshake error")) {
		kind = "tls_handshake"
	}
	w.metrics.HTTPErrors.WithLabelValues(kind).Inc()
	w.log.Debug("http server error", "event", "http_error", "reason", kind)
	if bytes.Contains(p, proxyRefusedText) {
		return len(p), nil // the PROXY header stage logged it, with its reason
	}
	if a, ok := handshakePeer(p); ok {
		w.refusals.refused(kind, a)
	}
	return len(p), nil
}

// proxyRefusedText marks a handshake that failed because the PROXY header
// stage refused the connection (admission.ErrProxyHeaderRefused).
var proxyRefusedText = []byte(admission.ErrProxyHeaderRefused.Error())

// handshakePeer is the socket peer in net/http's "TLS handshake error from
// ADDR: ..." line. The address is the kernel's, not client text, and is
// only kept if it parses as one; everything after it is dropped.
func handshakePeer(line []byte) (netip.Addr, bool) {
	_, rest, ok := bytes.Cut(line, []byte("TLS handshake error from "))
	if !ok {
		return netip.Addr{}, false
	}
	addr, _, ok := bytes.Cut(rest, []byte(": "))
	if !ok {
		return netip.Addr{}, false
	}
	ap, err := netip.ParseAddrPort(string(addr))
	if err != nil {
		return netip.Addr{}, false
	}
	return ap.Addr().Unmap(), true
}

// metricsHandler serves GET /metrics only; everything else is 404.
func (s *Server) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", s.metrics.Handler())
	// The same health endpoints as the public listener, reachable by IP
	// without a TLS name: a health check for balancers, Kubernetes probes
	// and the image's HEALTHCHECK in TLS modes (docs/deploy.md).
	s.healthRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { emptyStatus(w, http.StatusNotFound) })
	return withGenericBodies(canonicalOnly(mux))
}

// canonicalOnly answers 404 with an empty body to a path the mux would
// clean (`//v1/server`, `/v1/./server`, `/a/../v1/server`): the mux
// answers those 307 with the whole URL, query included, echoed in the
// Location header and an HTML body, and the redirect skips admission. The
// protocol's paths are canonical; no client needs the redirect.
func canonicalOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !canonicalPath(r.URL.Path) {
			emptyStatus(w, http.StatusNotFound)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// canonicalPath reports whether p is what path.Clean makes of it (a
// trailing slash aside), as net/http's mux requires to serve without a
// redirect.
func canonicalPath(p string) bool {
	if p == "" || p[0] != '/' {
		return false
	}
	c := path.Clean(p)
	return c == p || (strings.HasSuffix(p, "/") && c+"/" == p)
}

// Listen binds every configured listener. Nothing is served until Serve.
func (s *Server) Listen() error {
	type want struct {
		name, addr string
		h          http.Handler
		tls        bool
	}
	var wants []want
	switch s.cfg.Mode {
	case config.ModeInsecure:
		wants = append(wants, want{"public", s.cfg.InsecureListen, s.Handler(), false})
	case config.ModeStatic:
		wants = append(wants, want{"public", s.cfg.HTTPSListen, s.Handler(), true})
	case config.ModeAutocert:
		wants = append(wants, want{"public", s.cfg.HTTPSListen, s.Handler(), true},
			want{"acme", s.cfg.HTTPListen, withGenericBodies(s.acmeHandler), false})
	}
	if s.cfg.MetricsListen != "" {
		wants = append(wants, want{"metrics", s.cfg.MetricsListen, s.metricsHandler(), false})
	}
	for _, w := range wants {
		ln, err := net.Listen("tcp", w.addr)
		if err != nil {
			s.closeListeners()
			hint := ""
			if errors.Is(err, os.ErrPermission) {
				hint = " (ports below 1024 need CAP_NET_BIND_SERVICE: AmbientCapabilities=CAP_NET_BIND_SERVICE in the systemd unit, or setcap cap_net_bind_service=+ep on the binary)"
			}
			return fmt.Errorf("%w: %s listener on %s: %w%s", ErrListen, w.name, w.addr, err, hint)
		}
		if ln, err = s.wrapListener(w.name, ln); err != nil {
			s.closeListeners()
			return err
		}
		if w.tls {
			ln = tls.NewListener(ln, s.tlsConfig)
		}
		srv := s.httpServer(w.h)
		s.servers = append(s.servers, &listenerServer{name: w.name, ln: ln, srv: srv})
	}
	return nil
}

// wrapListener caps sockets at accept on the listeners the internet reaches
// (public, acme), then reads PROXY protocol headers on the public listener
// when configured: required from --trust-proxy peers, refused from anyone
// else. The socket cap goes innermost: it must key on the socket peer and
// never wait for a PROXY header in the accept loop.
func (s *Server) wrapListener(name string, raw net.Listener) (net.Listener, error) {
	if name == "metrics" {
		return raw, nil // loopback, operator-only
	}
	onReject := func(r admission.SocketReason, ip netip.Addr) {
		s.metrics.SocketsRefused.WithLabelValues(string(r)).Inc()
		s.refusals.refused(string(r), ip)
	}
	sl := s.cfg.Sockets
	sl.OnReject = onReject
	ln, err := admission.LimitListener(raw, sl) // config.Validate checked the limits
	if err != nil {
		_ = raw.Close()
		return nil, err
	}
	s.socketCapsOf(ln)
	if name == "public" && s.cfg.ProxyProtocol {
		ln = admission.WrapListener(ln, s.cfg.Admission.TrustedProxies, s.cfg.ProxyHeaderTimeout, onReject)
	}
	return ln, nil
}

func (s *Server) closeListeners() {
	for _, l := range s.servers {
		_ = l.ln.Close()
	}
}

// Addr returns the bound address of a listener ("public", "acme", "metrics").
func (s *Server) Addr(name string) net.Addr {
	for _, l := range s.servers {
		if l.name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

// Serve starts every listener and logs where it listens. Errors arrive on Done.
func (s *Server) Serve() {
	s.checkFDLimit()
	for _, l := range s.servers {
		s.log.Info("listening", "event", "listening", "listener", l.name, "addr", l.ln.Addr().String(), "mode", string(s.cfg.Mode))
		if ta, ok := l.ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsLoopback() {
			switch {
			case l.name == "metrics": // allowed by --metrics-allow-public
				s.log.Warn("metrics listener is not on loopback: anyone who reaches it sees the relay's counts", "event", "metrics_not_loopback", "addr", ta.String())
			case l.name == "public" && s.cfg.Mode == config.ModeInsecure:
				s.log.Warn("plain-HTTP listener is not on loopback: tokens and frames cross the network in the clear unless a TLS proxy is the only peer", "event", "insecure_not_loopback", "addr", ta.String())
			}
		}
		s.wg.Add(1)
		go func(l *listenerServer) {
			defer s.wg.Done()
			if err := l.srv.Serve(l.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.errc <- fmt.Errorf("relay: %s listener: %w", l.name, err)
			}
		}(l)
	}
	s.serving.Store(true)
}

// LameDuck starts the lame-duck window: /readyz and /healthz (public and
// metrics listeners) answer 503 while every listener keeps serving.
// Shutdown follows it.
func (s *Server) LameDuck() { s.lameDuck.Store(true) }

// Done delivers the first runtime failure of a listener.
func (s *Server) Done() <-chan error { return s.errc }

// Shutdown stops accepting, closes every WebSocket with 1001 and waits for
// them and for push wakes in flight until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, len(s.servers)+2)
	for i, l := range s.servers {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = l.srv.Shutdown(ctx) }()
	}
	wg.Add(1)
	go func() { defer wg.Done(); errs[len(s.servers)+1] = s.push.Shutdown(ctx) }()
	errs[len(s.servers)] = s.relay.Shutdown(ctx)
	wg.Wait()
	s.wg.Wait()
	if s.cluster != nil {
		s.cluster.Close() // releases this instance's claims for the others
	}
	return errors.Join(errs...)
}
