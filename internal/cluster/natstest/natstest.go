// Package natstest runs a real NATS server with JetStream in-process, bound
// to loopback, for cluster tests and `make cluster`. It is never linked
// into the relay binary.
package natstest

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// ErrNotReady: the server did not accept connections in time.
var ErrNotReady = errors.New("natstest: NATS server not ready")

// Server is an embedded NATS server that can be stopped and started again
// on the same port and store directory (JetStream state survives).
type Server struct {
	dir  string
	port int

	mu  sync.Mutex
	srv *server.Server
}

// Start runs a server on 127.0.0.1:port (0 picks a free port) with
// JetStream stored under dir.
func Start(dir string, port int) (*Server, error) {
	s := &Server{dir: dir, port: port}
	if port == 0 {
		s.port = -1 // nats-server's "random port"
	}
	if err := s.Restart(); err != nil {
		return nil, err
	}
	return s, nil
}

// URL is the server's client URL.
func (s *Server) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", s.port) }

// Port is the bound port.
func (s *Server) Port() int { return s.port }

// Restart starts the server again after Stop, on the same port.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return nil
	}
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      s.port,
		JetStream: true,
		StoreDir:  s.dir,
		NoLog:     true,
		NoSigs:    true,
		// Loopback only, nothing else listens: no HTTP monitor, no cluster.
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
	s.srv = srv
	return nil
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
