// Package natstest runs a real NATS server with JetStream in-process, bound
// to loopback, for cluster tests and `make cluster`. It is never linked
// into the relay binary.
package natstest

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrNotReady: the server did not accept connections in time.
var ErrNotReady = errors.New("natstest: NATS server not ready")

// Server is an embedded NATS server that can be stopped and started again
// on the same port and store directory (JetStream state survives).
type Server struct {
	cfg  Config
	dir  string
	port int
	// routePort is the route listener's port (cluster nodes), kept across
	// restarts.
	routePort int

	mu  sync.Mutex
	srv *server.Server
}

// Start runs a server on 127.0.0.1:port (0 picks a free port) with
// JetStream stored under dir.
func Start(dir string, port int) (*Server, error) {
	return StartConfig(Config{Dir: dir, Port: port})
}

// Config is a server's setup beyond the defaults (no auth, no TLS, one
// node). The zero value of a field keeps its default.
type Config struct {
	// Dir is the JetStream store (and where Auth is written).
	Dir string
	// Port is the client port on 127.0.0.1; 0 picks a free one.
	Port int
	// Auth is nats-server configuration text that turns on decentralized
	// auth (natsauth.Issuer.ServerConfig): read by nats-server's own
	// config parser, so the generated file is tested as operators use it.
	Auth string
	// TLS, when set, is required of every client.
	TLS *tls.Config
	// MaxPayload is the largest message the server accepts (its
	// max_payload); 0 keeps nats-server's 1 MiB.
	MaxPayload int32
	// ClusterName, with ServerName, makes the server a node of a JetStream
	// cluster: its route listener on 127.0.0.1:RoutePort and Routes, the
	// route URLs of every node (RouteURL; a clustered JetStream needs them
	// configured from the start, so pick the ports first with FreePort).
	ClusterName string
	ServerName  string
	RoutePort   int
	Routes      []string
	// NoAdvertise keeps a cluster node from telling clients the other
	// nodes' client URLs, so that a client reconnects only to the URLs it
	// was given (the chaos harness puts a cuttable link in front of each:
	// a discovered URL would bypass it).
	NoAdvertise bool
}

// FreePort is a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// RouteURL is the route URL of a node listening for routes on port.
func RouteURL(port int) string { return fmt.Sprintf("nats-route://127.0.0.1:%d", port) }

// StartConfig runs a server as c says.
func StartConfig(c Config) (*Server, error) {
	s := &Server{cfg: c, dir: c.Dir, port: c.Port, routePort: c.RoutePort}
	if c.Port == 0 {
		s.port = -1 // nats-server's "random port"
	}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) options() (*server.Options, error) {
	opts := &server.Options{}
	if s.cfg.Auth != "" {
		path := filepath.Join(s.dir, "auth.conf")
		if err := os.WriteFile(path, []byte(s.cfg.Auth), 0o600); err != nil {
			return nil, err
		}
		o, err := server.ProcessConfigFile(path)
		if err != nil {
			return nil, err
		}
		opts = o
	}
	opts.Host = "127.0.0.1"
	opts.Port = s.port
	opts.JetStream = true
	opts.StoreDir = s.dir
	opts.NoLog = true
	opts.NoSigs = true
	// Loopback only, nothing else listens: no HTTP monitor, no leafnodes.
	if s.cfg.MaxPayload != 0 {
		opts.MaxPayload = s.cfg.MaxPayload
	}
	if s.cfg.TLS != nil {
		opts.TLSConfig = s.cfg.TLS
		opts.TLS = true
		opts.TLSTimeout = 2
	}
	if s.cfg.ClusterName != "" {
		opts.ServerName = s.cfg.ServerName
		opts.Cluster.Name = s.cfg.ClusterName
		opts.Cluster.Host = "127.0.0.1"
		opts.Cluster.Port = -1
		opts.Cluster.NoAdvertise = s.cfg.NoAdvertise
		if s.routePort != 0 {
			opts.Cluster.Port = s.routePort
		}
		for _, r := range s.cfg.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, err
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	return opts, nil
}

// URL is the server's client URL.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// TLSURL is the client URL with the tls:// scheme.
func (s *Server) TLSURL() string { return fmt.Sprintf("tls://127.0.0.1:%d", s.port) }

// Port is the bound port.
func (s *Server) Port() int { return s.port }

// Restart starts the server again after Stop, on the same port.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	opts, err := s.options()
	if err != nil {
		return err
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		return err
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return ErrNotReady
	}
	if s.port <= 0 {
		if a, ok := srv.Addr().(*net.TCPAddr); ok {
			s.port = a.Port
		}
	}
	if s.cfg.ClusterName != "" && s.routePort == 0 {
		if a := srv.ClusterAddr(); a != nil {
			s.routePort = a.Port
		}
	}
	s.srv = srv
	return nil
}

// SetTLS replaces the TLS configuration the next Restart uses (a
// certificate rotated under running clients).
func (s *Server) SetTLS(c *tls.Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.TLS = c
}

// SetMaxPayload replaces the max_payload the next Restart uses (0: the
// default), as an operator changing the server's limit under running
// clients.
func (s *Server) SetMaxPayload(n int32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.MaxPayload = n
}

// SetAuth replaces the auth configuration the next Restart uses (an
// operator or account changed under running clients).
func (s *Server) SetAuth(conf string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cfg.Auth = conf
}

// Stop shuts the server down (clients see their connection drop).
func (s *Server) Stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Counts are the server's own message counters since it started (its
// varz in_msgs and out_msgs): what every client published to it, and what
// it delivered, JetStream's API requests and acks included.
type Counts struct {
	InMsgs, OutMsgs, InBytes, OutBytes int64
}

// Counts reads the running server's counters (zero when it is stopped).
func (s *Server) Counts() (Counts, error) {
	s.mu.Lock()
	srv := s.srv
	s.mu.Unlock()
	if srv == nil {
		return Counts{}, ErrNotReady
	}
	v, err := srv.Varz(nil)
	if err != nil {
		return Counts{}, err
	}
	return Counts{InMsgs: v.InMsgs, OutMsgs: v.OutMsgs, InBytes: v.InBytes, OutBytes: v.OutBytes}, nil
}
