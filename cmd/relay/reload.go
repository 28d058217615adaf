package main

import (
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/pyrycode/relay/internal/config"
	"github.com/pyrycode/relay/internal/server"
)

// reloader is SIGHUP: it rereads the --config file (with the same command
// line and environment, so their precedence holds), applies the settings
// that can change in place (config.Reloadable: the log level, the drain
// delay, the admission caps and rate, the socket caps), logs and keeps
// every other change until a restart, and reloads the static certificate
// as before. A file that does not parse or validate changes nothing. It
// runs on serve's signal loop only: the settings it swaps are the
// admission layer's (under its locks), the level (a slog.LevelVar) and
// cfg, which only that loop reads.
type reloader struct {
	args  []string
	cfg   config.Config // what runs now
	level *slog.LevelVar
	srv   *server.Server
	log   *slog.Logger
}

func (r *reloader) reload() {
	if r.cfg.ConfigFile != "" {
		r.reread()
	}
	if r.cfg.Mode == config.ModeStatic || r.cfg.ConfigFile == "" {
		r.srv.ReloadCertificate()
	}
}

func (r *reloader) reread() {
	next, err := config.Parse(r.args, os.Getenv, io.Discard)
	if err != nil {
		r.refused(err)
		return
	}
	merged, applied, kept := r.cfg.Merge(next)
	for _, s := range kept {
		r.log.Warn("a changed setting cannot apply while running; it is kept until a restart", "event", "setting_not_reloaded",
			"setting", s.Name, "setting_value", s.Value, "setting_from", s.From)
	}
	if len(applied) > 0 {
		if err := merged.Validate(); err != nil {
			r.refused(err)
			return
		}
		if err := r.srv.ApplyLimits(merged); err != nil {
			r.refused(err)
			return
		}
	}
	r.cfg = merged
	// The reload's own lines are written at the more verbose of the old
	// and the new level: a level raised to warn still shows why, one
	// lowered to info shows it too.
	lv := parseLevel(merged.LogLevel)
	if lv < r.level.Level() {
		r.level.Set(lv)
	}
	for _, s := range applied {
		r.log.Info("setting changed", "event", "setting_changed", "setting", s.Name, "setting_value", s.Value, "setting_from", s.From)
	}
	r.log.Info("configuration reloaded", "event", "config_reloaded", "count", len(applied))
	r.level.Set(lv)
}

func (r *reloader) refused(err error) {
	r.log.Error("configuration reload refused; every setting kept", "event", "config_reload_refused",
		"error", strings.ReplaceAll(packagePrefixes.Replace(err.Error()), "\n", " "))
}
