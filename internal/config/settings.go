package config

import (
	"flag"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// notFromEnv are the flags no RELAY_* variable sets: --check is what an
// invocation does, not a setting, and a RELAY_CHECK left in an environment
// would turn every start into a check.
var notFromEnv = map[string]bool{"check": true}

// Setting is one flag's effective value and where it came from.
type Setting struct {
	Name  string // the flag's name, as in the file: max-conns
	Value string // as the flag prints it, a URL's password redacted
	// From is "default", "flag", "env" (its RELAY_* variable) or "FILE:LINE".
	From string
	// Default: Value is the flag's default.
	Default bool
	kind    string // duration, bytes, N, number, bool, string (for TOML)
}

// Settings returns every setting (all flags but --config and --check) in
// the flags' order, secrets redacted.
func (c Config) Settings() []Setting { return slices.Clone(c.settings) }

// NonDefault returns the settings whose value is not the default, for the
// start-up log.
func (c Config) NonDefault() []Setting {
	var out []Setting
	for _, s := range c.settings {
		if !s.Default {
			out = append(out, s)
		}
	}
	return out
}

// snapshot records every flag's value and origin after parsing.
func snapshot(fs *flag.FlagSet, from map[string]origin, cmdline map[string]bool) []Setting {
	var out []Setting
	fs.VisitAll(func(f *flag.Flag) {
		if notInFile[f.Name] {
			return
		}
		s := Setting{Name: f.Name, Value: Redact(f.Value.String()), From: "default", Default: f.Value.String() == f.DefValue, kind: f.Value.(*hinted).kind()}
		switch o, ok := from[f.Name]; {
		case ok && o.env:
			s.From = "env"
		case ok && o.file != "":
			s.From = fmt.Sprintf("%s:%d", o.file, o.line)
		case cmdline[f.Name]:
			s.From = "flag"
		}
		out = append(out, s)
	})
	return out
}

// Redact replaces the password of every URL in a comma-separated value
// (nats://user:secret@host -> nats://user:xxxxx@host). No flag holds a
// secret itself (keys are files, named by path); a URL's user info is the
// one place one could be typed.
func Redact(v string) string {
	if !strings.Contains(v, "@") {
		return v
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			parts[i] = u.Redacted()
		}
	}
	return strings.Join(parts, ",")
}

// WriteSettings prints settings as a TOML file relay serve --config would
// read back, each line commented with where its value came from; a setting
// at its default is printed commented out (set, even to its default, a
// flag such as --http-listen would conflict with the mode).
func WriteSettings(w io.Writer, settings []Setting) {
	for _, s := range settings {
		line, err := toml.Marshal(map[string]any{s.Name: tomlValue(s)})
		if err != nil { // a string always marshals; kept for safety
			line = []byte(fmt.Sprintf("# %s: not representable\n", s.Name))
		}
		prefix := ""
		if s.Default {
			prefix = "# "
		}
		fmt.Fprintf(w, "%s%s  # %s\n", prefix, strings.TrimSuffix(string(line), "\n"), s.From)
	}
}

// tomlValue is the value as the file would hold it: numbers and booleans
// bare, everything else (durations included) a string.
func tomlValue(s Setting) any {
	switch s.kind {
	case "bool":
		if b, err := strconv.ParseBool(s.Value); err == nil {
			return b
		}
	case "N", "bytes":
		if n, err := strconv.ParseInt(s.Value, 10, 64); err == nil {
			return n
		}
	case "number":
		if f, err := strconv.ParseFloat(s.Value, 64); err == nil {
			return f
		}
	}
	return s.Value
}

// configPath is the file to read: --config on the command line, else
// RELAY_CONFIG. A scratch parse finds it; the real parse reports any error
// of the command line.
func configPath(args []string, env Env) string {
	var scratch Config
	var trust string
	fs := newFlagSet(&scratch, func(string) string { return "" }, &trust, new(flagSink))
	_ = fs.Parse(args)
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == "config" })
	if set {
		return scratch.ConfigFile
	}
	return env(EnvName("config"))
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
