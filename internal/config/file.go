package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// The configuration file (relay serve --config FILE, or RELAY_CONFIG) is
// TOML whose keys are relay serve's flag names, dashes and all, at the top
// level:
//
//	domain = "relay.example.com"
//	max-conns = 4096
//	upgrade-rate = 2.5
//	drain-delay = "5s"                  # durations are strings with a unit
//	trust-proxy = ["10.0.0.5/32"]       # the list flags take an array or "a,b"
//
// Every value goes through its flag's own parser, so a value means in the
// file what it means on the command line. The command line wins over the
// environment, which wins over the file, which wins over the default. A key
// that is not a flag, a table, or a value that is not a string, number,
// boolean (or, for the list flags, an array of strings) refuses the start
// naming the file, the line and the key.

// notInFile are the flags a configuration file cannot set: which file to
// read, and whether to only check it.
var notInFile = map[string]bool{"config": true, "check": true}

// listFlags take a TOML array of strings as well as one comma-separated string.
var listFlags = map[string]bool{"cluster-nats": true, "trust-proxy": true}

// maxConfigBytes caps the file read: a configuration naming every flag is
// a few KiB.
const maxConfigBytes = 1 << 20

// fileValue is one setting read from the file: its value as the flag's Set
// takes it, and where it was written.
type fileValue struct {
	raw  string
	line int
}

// readConfigFile reads and checks path. Every refusal is an *Error naming
// the file (and the line, when there is one).
func readConfigFile(path string, flags *flag.FlagSet) (map[string]fileValue, error) {
	data, err := readCapped(path)
	if err != nil {
		return nil, &Error{Problem: fmt.Sprintf("--config / %s: %s: %s", EnvName("config"), show(path), err)}
	}
	at := func(line int, format string, a ...any) *Error {
		return &Error{Problem: fmt.Sprintf("%s:%d: ", path, line) + fmt.Sprintf(format, a...)}
	}
	// The library checks the whole document first (syntax, duplicate
	// keys, redefined tables), with the line of the first problem.
	var doc map[string]any
	if err := toml.Unmarshal(data, &doc); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, _ := de.Position()
			return nil, at(row, "%s", oneLine(strings.TrimPrefix(de.Error(), "toml: ")))
		}
		return nil, &Error{Problem: path + ": " + oneLine(err.Error())}
	}
	// Then its shape, with the line of each key: only top-level keys, each
	// a flag's name exactly.
	lines := map[string]int{}
	var p unstable.Parser
	p.Reset(data)
	for p.NextExpression() {
		e := p.Expression()
		if e.Kind != unstable.KeyValue && e.Kind != unstable.Table && e.Kind != unstable.ArrayTable {
			continue
		}
		it := e.Key()
		var parts []string
		line := 0
		for it.Next() {
			n := it.Node()
			if line == 0 {
				line = p.Shape(n.Raw).Start.Line
			}
			parts = append(parts, string(n.Data))
		}
		name := strings.Join(parts, ".")
		if e.Kind != unstable.KeyValue {
			return nil, at(line, "[%s]: tables are not used: every key is a flag name at the top level, e.g. max-conns = 4096", oneLine(name))
		}
		if f := flags.Lookup(name); f == nil || notInFile[name] {
			hint := ""
			if near := nearest(name, fileKeys(flags)); near != "" {
				hint = "; did you mean " + near + "?"
			}
			return nil, at(line, "unknown key %s%s (the keys are relay serve's flag names without the leading dashes, e.g. max-conns; relay serve -h lists them)", show(name), hint)
		}
		lines[name] = line
	}
	if err := p.Error(); err != nil { // Unmarshal accepted the document: not expected
		return nil, &Error{Problem: path + ": " + oneLine(err.Error())}
	}
	out := make(map[string]fileValue, len(doc))
	for name, v := range doc {
		raw, ok := tomlScalar(v, listFlags[name])
		if !ok {
			want := "a string, a number or a boolean (a duration as a string with a unit, e.g. \"30s\")"
			if listFlags[name] {
				want = "a string or an array of strings"
			}
			return nil, at(lines[name], "%s: want %s", name, want)
		}
		out[name] = fileValue{raw: raw, line: lines[name]}
	}
	return out, nil
}

// fileKeys is the set of keys a file may hold.
func fileKeys(flags *flag.FlagSet) map[string]bool {
	keys := map[string]bool{}
	flags.VisitAll(func(f *flag.Flag) {
		if !notInFile[f.Name] {
			keys[f.Name] = true
		}
	})
	return keys
}

// tomlScalar renders a decoded TOML value as the flag's Set takes it.
func tomlScalar(v any, list bool) (string, bool) {
	switch v := v.(type) {
	case string:
		return v, true
	case int64:
		return strconv.FormatInt(v, 10), true
	case float64:
		return strconv.FormatFloat(v, 'g', -1, 64), true
	case bool:
		return strconv.FormatBool(v), true
	case []any:
		if !list {
			return "", false
		}
		parts := make([]string, 0, len(v))
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return "", false
			}
			parts = append(parts, s)
		}
		return strings.Join(parts, ","), true
	}
	return "", false
}

// readCapped reads at most maxConfigBytes of path.
func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, pathErr(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxConfigBytes+1))
	if err != nil {
		return nil, pathErr(err)
	}
	if len(data) > maxConfigBytes {
		return nil, fmt.Errorf("larger than %d bytes", maxConfigBytes)
	}
	return data, nil
}

// pathErr drops the path from an *os.PathError (the caller names it).
func pathErr(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
