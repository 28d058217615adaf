package config

// Reloadable are the settings SIGHUP applies in place (docs/deploy.md,
// Reload); a change to any other is logged and kept until a restart.
var Reloadable = []string{
	"log-level", "drain-delay",
	"max-conns", "max-conns-per-ip", "upgrade-rate", "upgrade-burst",
	"max-sockets", "max-sockets-per-ip",
}

// Merge returns c with the Reloadable settings that differ in next taken
// from next (the fields and their Settings entries), the settings it took
// (applied) and the changed ones it left as they were in c (kept). The
// result must be validated again: c's kept settings and next's applied
// ones may not go together.
func (c Config) Merge(next Config) (merged Config, applied, kept []Setting) {
	merged = c
	merged.settings = c.Settings()
	idx := map[string]int{}
	for i, s := range merged.settings {
		idx[s.Name] = i
	}
	for _, ns := range next.settings {
		i, ok := idx[ns.Name]
		if !ok || merged.settings[i].Value == ns.Value {
			continue
		}
		if !take(&merged, next, ns.Name) {
			kept = append(kept, ns)
			continue
		}
		merged.settings[i] = ns
		applied = append(applied, ns)
	}
	return merged, applied, kept
}

// take copies the field behind a Reloadable setting from next into m.
func take(m *Config, next Config, name string) bool {
	a, na := &m.Admission, next.Admission
	switch name {
	case "log-level":
		m.LogLevel = next.LogLevel
	case "drain-delay":
		m.DrainDelay = next.DrainDelay
	case "max-conns":
		a.MaxConns = na.MaxConns
	case "max-conns-per-ip":
		a.MaxConnsPerIP = na.MaxConnsPerIP
	case "upgrade-rate":
		a.UpgradeRate = na.UpgradeRate
	case "upgrade-burst":
		a.UpgradeBurst = na.UpgradeBurst
	case "max-sockets":
		m.Sockets.Max = next.Sockets.Max
	case "max-sockets-per-ip":
		m.Sockets.MaxPerIP = next.Sockets.MaxPerIP
	default:
		return false
	}
	return true
}
