package server

import (
	"errors"

	"github.com/pyrycode/relay/internal/admission"
	"github.com/pyrycode/relay/internal/config"
)

// ApplyLimits applies cfg's admission caps and rate (--max-conns,
// --max-conns-per-ip, --upgrade-rate, --upgrade-burst) and socket caps
// (--max-sockets, --max-sockets-per-ip) to the running relay: SIGHUP's
// reload (config.Reloadable). cfg must have been validated. Connections
// and sockets already open stay; a lowered cap refuses new ones.
func (s *Server) ApplyLimits(cfg config.Config) error {
	o := cfg.Admission
	if err := s.admit.SetLimits(o); err != nil {
		return err
	}
	var errs []error
	for _, c := range s.socketCaps {
		errs = append(errs, c.SetCaps(cfg.Sockets.Max, cfg.Sockets.MaxPerIP))
	}
	return errors.Join(errs...)
}

// socketCapsOf keeps the socket cap of a wrapped listener for ApplyLimits.
func (s *Server) socketCapsOf(ln any) {
	if c, ok := ln.(admission.SocketCaps); ok {
		s.socketCaps = append(s.socketCaps, c)
	}
}
