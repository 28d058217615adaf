package server

import (
	"net"
	"net/http"
	"strings"
)

// hostPolicy is the set of Host values the public listener answers in TLS
// modes; anything else gets 421 (misdirected request) with an empty body.
// nil accepts every Host (insecure mode: a proxy in front owns the names).
type hostPolicy map[string]bool

func (hp hostPolicy) wrap(h http.Handler) http.Handler {
	if hp == nil {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := r.Host
		if hh, _, err := net.SplitHostPort(host); err == nil {
			host = hh
		}
		if !hp[strings.ToLower(strings.TrimSuffix(host, "."))] {
			emptyStatus(w, http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// setupTLS prepares the TLS configuration for the chosen mode. Filled in by
// the TLS modes; insecure mode needs nothing.
func (s *Server) setupTLS() error { return nil }
