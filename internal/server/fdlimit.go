package server

import "github.com/pyrycode/relay/internal/config"

// fdHeadroom is the descriptors the process holds besides capped sockets:
// listeners, the metrics listener's scrapes, outbound connections (ACME,
// FCM), the log, certificate files.
const fdHeadroom = 64

// fdsNeeded is the descriptor count the socket caps can reach: --max-sockets
// on each capped listener (public, and the ACME port in autocert mode) plus
// fdHeadroom.
func fdsNeeded(c config.Config) uint64 {
	listeners := 1
	if c.Mode == config.ModeAutocert {
		listeners = 2
	}
	return uint64(listeners*c.Sockets.Max) + fdHeadroom
}

// checkFDLimit warns when the file-descriptor limit is below what the
// socket caps allow: the relay would hit EMFILE (and refuse everyone) before
// its own caps refuse anyone.
func (s *Server) checkFDLimit() {
	limit, ok := fdLimit()
	if !ok {
		return
	}
	if need := fdsNeeded(s.cfg); limit < need {
		s.log.Warn("the file-descriptor limit is below what the socket caps allow: raise it (systemd LimitNOFILE=, ulimit -n) to at least the count given, or lower --max-sockets",
			"event", "fd_limit_low", "count", need)
	}
}
